"""The guestbook app: a few views that exercise templates, forms, CSRF and uploads."""

from django.apps import AppConfig


class GuestbookConfig(AppConfig):
    name = "guestbook"
