"""URLs of the guestbook app."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("hello/<str:name>/", views.hello, name="hello"),
    path("sign/", views.sign, name="sign"),
    path("upload/", views.upload, name="upload"),
    path("echo/", views.echo, name="echo"),
    path("whoami/", views.whoami, name="whoami"),
    path("boom/", views.boom, name="boom"),
]
