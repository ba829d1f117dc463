"""Views and URLs for the DRF throttle tests."""

from __future__ import annotations

from django.urls import path
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from ratelimit_app.contrib.drf import PolicyThrottle


class NamedThrottle(PolicyThrottle):
    policy = "drf-named"


class DeclaredThrottle(PolicyThrottle):
    rate = "2/m"
    scope = "drf-declared"
    key = "ip"


class ScopedThrottle(PolicyThrottle):
    scope = "drf-scoped"  # rate from REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']


class CostlyThrottle(PolicyThrottle):
    policy = "drf-costly"
    cost = 3


class Api(APIView):
    renderer_classes = [JSONRenderer]

    def get(self, request):
        return Response({"ok": True})


class NamedView(Api):
    throttle_classes = [NamedThrottle]


class ViewPolicyView(Api):
    throttle_classes = [PolicyThrottle]
    throttle_policy = "drf-view"


class PairView(Api):
    throttle_classes = [PolicyThrottle]
    throttle_policy = ("drf-wide", "drf-narrow")


class RoutedView(Api):
    throttle_classes = [PolicyThrottle]
    throttle_policy = "drf-routed"


class DeclaredView(Api):
    throttle_classes = [DeclaredThrottle]


class ScopedView(Api):
    throttle_classes = [ScopedThrottle]


class CostlyView(Api):
    throttle_classes = [CostlyThrottle]


class UnthrottledView(Api):
    throttle_classes = [PolicyThrottle]  # no throttle_policy: not throttled


urlpatterns = [
    path("drf/named/", NamedView.as_view()),
    path("drf/view/", ViewPolicyView.as_view()),
    path("drf/pair/", PairView.as_view()),
    path("drf/routed/", RoutedView.as_view()),
    path("drf/declared/", DeclaredView.as_view()),
    path("drf/scoped/", ScopedView.as_view()),
    path("drf/costly/", CostlyView.as_view()),
    path("drf/unthrottled/", UnthrottledView.as_view()),
]
