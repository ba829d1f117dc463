"""Demo views limited through the engine."""

from __future__ import annotations

import math
import os
import socket

from django.http import HttpRequest, JsonResponse

from ratelimit_app import limiter

TOKEN_RATE = "5/10s"


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "endpoints": {
                "/token": f"token bucket, {TOKEN_RATE} per client IP",
                "/api/hello": "middleware policy demo-api, 10/m per user or IP",
                "/demo-service/hello": "policy demo-service, 100/d per IP, shared "
                "by every instance behind the load balancer",
                "/admin/": "edit policies",
            }
        }
    )


def hello(request: HttpRequest) -> JsonResponse:
    """Limited by the middleware through the settings policy "demo-api"."""
    return JsonResponse({"hello": "world"})


def service_hello(request: HttpRequest) -> JsonResponse:
    """Limited by the settings policy "demo-service" across all instances."""
    instance = os.environ.get("DEMO_INSTANCE") or socket.gethostname()
    return JsonResponse({"hello": "world", "instance": instance})


def token(request: HttpRequest) -> JsonResponse:
    """A token bucket per client IP; 429 with Retry-After when exhausted."""
    ip = request.META.get("REMOTE_ADDR", "")
    decision = limiter.hit("demo-token", ip, TOKEN_RATE, algorithm="token_bucket")
    body = {
        "allowed": decision.allowed,
        "ip": ip,
        "message": "Request allowed" if decision.allowed else "Rate limit exceeded",
        "remaining": decision.remaining,
    }
    response = JsonResponse(body, status=200 if decision.allowed else 429)
    if not decision.allowed and decision.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return response
