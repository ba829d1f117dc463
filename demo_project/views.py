"""Demo views limited through the engine."""

from __future__ import annotations

import os
import socket

from django.contrib.auth import authenticate
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ratelimit_app.decorators import rate_limit
from ratelimit_app.headers import whole_seconds
from ratelimit_app.identity import client_ip


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "endpoints": {
                "/token": "token bucket, policy demo-token (5 per 10 s per IP)",
                "/leaky": "leaky bucket, policy demo-leaky (5 per 10 s per IP)",
                "/api/hello": "middleware policy demo-api, 10/m per user or IP",
                "/login": "POST username and password; policy demo-login, 5/m per IP",
                "/demo-service/hello": "policy demo-service, 100/d per IP, shared "
                "by every instance behind the load balancer",
                "/admin/": "edit policies",
                "/admin/ratelimit_app/policy/dashboard/": "usage charts",
            }
        }
    )


def hello(request: HttpRequest) -> JsonResponse:
    """Limited by the middleware through the policy "demo-api"."""
    return JsonResponse({"hello": "world"})


def service_hello(request: HttpRequest) -> JsonResponse:
    """Limited by the settings policy "demo-service" across all instances."""
    instance = os.environ.get("DEMO_INSTANCE") or socket.gethostname()
    return JsonResponse({"hello": "world", "instance": instance})


def decision_response(request: HttpRequest) -> JsonResponse:
    """The demo's answer for a view limited with ``@rate_limit(block=False)``:
    200 or 429, with Retry-After when blocked."""
    outcome = getattr(request, "ratelimit", None)
    allowed = outcome is None or not outcome.blocked
    body = {
        "allowed": allowed,
        "ip": client_ip(request),
        "message": "Request allowed" if allowed else "Rate limit exceeded",
    }
    response = JsonResponse(body, status=200 if allowed else 429)
    if not allowed and outcome.retry_after is not None:
        response["Retry-After"] = str(max(1, whole_seconds(outcome.retry_after)))
    return response


# Both policies are database rows (demo_project/policies.py, seeded by
# `manage.py demo_setup`): an edit in the admin changes these limits.
@rate_limit("demo-token", block=False)
def token(request: HttpRequest) -> JsonResponse:
    return decision_response(request)


@rate_limit("demo-leaky", block=False)
def leaky(request: HttpRequest) -> JsonResponse:
    return decision_response(request)


@csrf_exempt  # an API endpoint for curl; it sets no session
@require_POST
def login(request: HttpRequest) -> JsonResponse:
    """Checks credentials only; POSTs are limited by the policy "demo-login"."""
    user = authenticate(
        request,
        username=request.POST.get("username", ""),
        password=request.POST.get("password", ""),
    )
    if user is None:
        return JsonResponse({"authenticated": False}, status=401)
    return JsonResponse({"authenticated": True, "username": user.get_username()})
