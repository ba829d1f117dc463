"""Views and URLs for the django-ratelimit compatibility tests."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from ratelimit_app.compat import UNSAFE, ratelimit


class CustomLimited(PermissionDenied):
    """settings.RATELIMIT_EXCEPTION_CLASS for the tests."""


def tenant_key(group, request):
    """A dotted-path key: django-ratelimit passes (group, request)."""
    return f"{group}|{request.headers.get('X-Tenant', '')}"


def tenant_rate(group, request):
    """A dotted-path rate: unlimited for the 'free-pass' tenant."""
    return None if request.headers.get("X-Tenant") == "free-pass" else "1/h"


def teapot(request, exception):
    """settings.RATELIMIT_VIEW for the compat middleware test."""
    return HttpResponse(f"slow down ({type(exception).__name__})", status=418)


@ratelimit(key="ip", rate="2/h")
def blocking(request):
    return HttpResponse("ok")


@ratelimit(key="ip", rate="1/h", block=False)
@ratelimit(key="ip", rate="100/h", block=False)
def annotating(request):
    return JsonResponse({"limited": request.limited})


@ratelimit(key="ip", rate="5/h")
@ratelimit(key="ip", rate="2/h")
def stacked(request):
    return HttpResponse("ok")


@ratelimit(key="ip", rate="1/h", method=UNSAFE)
def unsafe_only(request):
    return HttpResponse("ok")


@method_decorator(ratelimit(key="ip", rate="2/h"), name="get")
class ClassLimited(View):
    def get(self, request):
        return HttpResponse("ok")

    def post(self, request):
        return HttpResponse("posted")


@ratelimit(key="ip", rate="1/h")
async def async_limited(request):
    return HttpResponse("ok")


urlpatterns = [
    path("blocking/", blocking),
    path("annotating/", annotating),
    path("stacked/", stacked),
    path("unsafe/", unsafe_only),
    path("class/", ClassLimited.as_view()),
    path("async/", async_limited),
]
