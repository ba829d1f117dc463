"""Views for the enforcement tests."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.views import View

from ratelimit_app.decorators import rate_limit


def plain(request, *args, **kwargs):
    return HttpResponse("ok")


def own_ratelimit_header(request):
    """A view that states its own quota (lowercase name, as some proxies do)."""
    response = HttpResponse("ok")
    response.headers["ratelimit"] = '"upstream";r=5;t=1'
    return response


async def async_plain(request):
    return HttpResponse("ok")


@rate_limit(rate="2/m", name="code-limited")
def code_limited(request):
    return HttpResponse("ok")


@rate_limit("named-policy")
def named(request):
    return HttpResponse("ok")


@rate_limit(rate="2/m", name="annotate-only", block=False)
def annotate_only(request):
    decisions = request.ratelimit.decisions
    return JsonResponse({"allowed": [d.allowed for d in decisions]})


@rate_limit(rate="2/m", name="async-code")
async def async_code(request):
    return HttpResponse("ok")


@rate_limit(
    rate="2/m",
    name="failed-logins",
    methods=["POST"],
    count_when=lambda response: response.status_code >= 400,
)
def login(request):
    ok = request.POST.get("password") == "right"
    return HttpResponse("welcome" if ok else "wrong", status=200 if ok else 401)


@rate_limit(
    rate="10/m", name="costly", cost=lambda request: int(request.GET.get("n", 1))
)
def costly(request):
    return HttpResponse("ok")


@rate_limit(rate="2/m", name="class-based")
class ClassBased(View):
    def get(self, request):
        return HttpResponse("ok")


def custom_blocked(request, exception):
    """RATELIMIT['VIEW'] for the tests: a teapot naming the blocking policies."""
    names = ",".join(exception.outcome.blocking_names)
    return HttpResponse(f"slow down: {names}", status=418)


def user_tier_key(request):
    """A dotted-path key function for the tests."""
    return request.headers.get("X-Tenant", "")
