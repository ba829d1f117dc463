"""The benchmark's one view, bare or under a peer library's decorator."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse

from bench.http_site import DJANGO_RATELIMIT, DRF_THROTTLE, RATE, SMART_RATELIMIT


def hello(request):
    return HttpResponse(b"ok", content_type="text/plain")


def contender_view():
    """``hello`` as this process's contender serves it."""
    if settings.BENCH_CONTENDER == DJANGO_RATELIMIT:
        from django_ratelimit.decorators import ratelimit

        return ratelimit(key="ip", rate=RATE, block=True)(hello)
    if settings.BENCH_CONTENDER == SMART_RATELIMIT:
        from django_smart_ratelimit import rate_limit

        return rate_limit(key="ip", rate=RATE, block=True)(hello)
    if settings.BENCH_CONTENDER == DRF_THROTTLE:
        return throttled_view()
    return hello


def throttled_view():
    """``hello`` as a DRF view under AnonRateThrottle (rate in settings)."""
    from rest_framework.throttling import AnonRateThrottle
    from rest_framework.views import APIView

    class Hello(APIView):
        throttle_classes = [AnonRateThrottle]
        authentication_classes = []
        permission_classes = []

        def get(self, request):
            return hello(request)

    return Hello.as_view()
