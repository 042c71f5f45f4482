"""Views of the guestbook app."""

import hashlib

from django import forms
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe


class SignForm(forms.Form):
    name = forms.CharField(max_length=100)
    message = forms.CharField(max_length=1000, required=False)


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """A template view; the context shows what Django understood of the request."""
    context = {"greeting": "Hello from Django", "method": request.method, "path": request.path,
               "query": request.GET.get("q", "")}
    return render(request, "guestbook/home.html", context)


@require_safe
def hello(request: HttpRequest, name: str) -> HttpResponse:
    """Echoes the (percent-decoded, UTF-8) path segment."""
    return HttpResponse(f"Hello, {name}!", content_type="text/plain; charset=utf-8")


@require_http_methods(["GET", "POST"])
def sign(request: HttpRequest) -> HttpResponse:
    """The guestbook form; its POST is protected by Django's CSRF middleware."""
    if request.method == "POST":
        form = SignForm(request.POST)
        if form.is_valid():
            return render(request, "guestbook/thanks.html", form.cleaned_data)
        return render(request, "guestbook/sign.html", {"form": form}, status=400)
    return render(request, "guestbook/sign.html", {"form": SignForm()})


@csrf_exempt
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    """A multipart upload: size and sha256 of the ``file`` field, plus the other fields."""
    f = request.FILES.get("file")
    if f is None:
        return HttpResponseBadRequest("no 'file' field")
    hasher = hashlib.sha256()
    for chunk in f.chunks():
        hasher.update(chunk)
    return JsonResponse({"size": f.size, "sha256": hasher.hexdigest(), "filename": f.name,
                         "fields": {key: request.POST.getlist(key) for key in request.POST}})


@csrf_exempt
@require_POST
def echo(request: HttpRequest) -> HttpResponse:
    """Size and sha256 of the raw body, and the content type Django saw."""
    body = request.body
    return JsonResponse({"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                         "content_type": request.content_type})


def whoami(request: HttpRequest) -> HttpResponse:
    """How Django sees the request: absolute URI, host, port, scheme, client address."""
    meta = request.META
    return JsonResponse({
        "absolute_uri": request.build_absolute_uri(),
        "host": request.get_host(),
        "port": request.get_port(),
        "scheme": request.scheme,
        "is_secure": request.is_secure(),
        "path": request.path,
        "get": {key: request.GET.getlist(key) for key in request.GET},
        "remote_addr": meta.get("REMOTE_ADDR"),
        "server_name": meta.get("SERVER_NAME"),
        "server_port": meta.get("SERVER_PORT"),
    })


def boom(request: HttpRequest) -> HttpResponse:
    """Raises: Django must answer 500."""
    raise RuntimeError("guestbook: deliberate failure")
