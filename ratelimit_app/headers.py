"""RateLimit / RateLimit-Policy / Retry-After / X-RateLimit-* headers and the 429.

Header syntax: draft-ietf-httpapi-ratelimit-headers-10 (structured fields):
``RateLimit-Policy: "api";q=100;w=60`` and ``RateLimit: "api";r=0;t=17``, one
list item per enforcing policy that matched. Per algorithm:

- ``q``: the capacity (the rate's limit, or ``burst`` for bucket algorithms);
- ``w``: the window in seconds; for bucket algorithms the time to refill the
  whole capacity (capacity x period / limit);
- ``r``: units remaining after this request;
- ``t``: seconds until the quota is fully available again (the window's end
  for window algorithms, a full bucket for buckets), rounded up.
"""

from __future__ import annotations

import math
from functools import lru_cache

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import ResponseHeaders
from django.template.loader import render_to_string
from django.utils.module_loading import import_string

from . import conf, fallback
from .exceptions import RateLimitExceeded
from .outcome import Outcome
from .rates import Rate
from .types import WINDOW_ALGORITHMS, Decision

DEFAULT_MESSAGE = "Rate limit exceeded"


@lru_cache(maxsize=1024)
def sf_string(value: str) -> str:
    """A structured-field String (RFC 8941): quoted, with \\ and " escaped."""
    printable = "".join(c for c in value if 0x20 <= ord(c) < 0x7F)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_item(name: str, algorithm: str, rate: Rate, capacity: int) -> str:
    """One RateLimit-Policy list item; the same for every request of a policy."""
    return _policy_item(name, algorithm, rate.limit, rate.period_ms, capacity)


# Cached on plain values: hashing a Rate (a dataclass) runs Python code, and
# this is asked for every policy of every request.
@lru_cache(maxsize=4096)
def _policy_item(
    name: str, algorithm: str, limit: int, period_ms: int, capacity: int
) -> str:
    if algorithm in WINDOW_ALGORITHMS:
        window = math.ceil(period_ms / 1000)
    else:  # the time to refill the whole capacity
        window = math.ceil(capacity * period_ms / limit / 1000)
    return f"{sf_string(name)};q={capacity};w={window}"


def whole_seconds(seconds: float) -> int:
    """Round up, so a client never retries before it can pass; from the
    nearest whole millisecond (half up), so float noise such as
    ``1.0000000001`` is 1, not 2. Integer arithmetic: ``round(x, 3)``
    formats through decimal strings, and this runs per limited response."""
    milliseconds = int(seconds * 1000 + 0.5)
    return -(-milliseconds // 1000)


def ratelimit_headers(outcome: Outcome) -> dict[str, str]:
    """Headers for every enforcing policy that matched (shadow ones are silent)."""
    # Plain loops and a cache by rule: this runs on every limited response.
    if outcome.headers is not None:  # a lane built them (see lanes)
        return outcome.headers
    if len(outcome.decisions) == 1 and not conf.get("LEGACY_HEADERS"):
        return _one_policy(outcome.policies[0], outcome.decisions[0], outcome.specs[0])
    items, states, shown = [], [], []
    for p, d, rule in zip(
        outcome.policies, outcome.decisions, outcome.specs, strict=True
    ):
        if d.shadow:
            continue
        item, label = labels_of(p.spec, rule, d.limit)
        items.append(item)
        states.append(state_item(label, d))
        shown.append(d)
    if not shown:
        return {}
    if len(shown) == 1:
        headers = {"RateLimit-Policy": items[0], "RateLimit": states[0]}
    else:
        headers = {"RateLimit-Policy": ", ".join(items), "RateLimit": ", ".join(states)}
    if conf.get("LEGACY_HEADERS"):
        decision = min(shown, key=lambda d: d.remaining)
        headers["X-RateLimit-Limit"] = str(decision.limit)
        headers["X-RateLimit-Remaining"] = str(decision.remaining)
        headers["X-RateLimit-Reset"] = str(whole_seconds(decision.reset_after))
    return headers


def _one_policy(policy, decision: Decision, rule) -> dict[str, str]:
    """``ratelimit_headers`` of one policy (the common case), without lists."""
    if decision.shadow:
        return {}
    item, label = labels_of(policy.spec, rule, decision.limit)
    return {"RateLimit-Policy": item, "RateLimit": state_item(label, decision)}


def state_item(label: str, decision: Decision) -> str:
    """A policy's ``RateLimit`` list item: its name, r and t."""
    return f"{label};r={decision.remaining};t={whole_seconds(decision.reset_after)}"


# id(rule) -> (rule, policy spec, capacity, RateLimit-Policy item, quoted name):
# a rule (a tier's or a cost's) is hashed by value in Python code, slower
# than building the item; the entry keeps its rule alive, so its id is not
# reused while cached.
_labels: dict[int, tuple] = {}
MAX_LABELS = 4096


def labels_of(spec, rule, capacity: int) -> tuple[str, str]:
    """(RateLimit-Policy item, quoted name) of one policy's rule."""
    found = _labels.get(id(rule))
    if (
        found is not None
        and found[0] is rule
        and found[1] is spec
        and found[2] == capacity
    ):
        return found[3], found[4]
    rate = rule.rate
    item = _policy_item(spec.name, spec.algorithm, rate.limit, rate.period_ms, capacity)
    label = sf_string(spec.name)
    if len(_labels) >= MAX_LABELS:
        _labels.clear()
    _labels[id(rule)] = (rule, spec, capacity, item, label)
    return item, label


def apply_headers(response: HttpResponse, outcome: Outcome | None) -> HttpResponse:
    """Add the headers the response does not set itself."""
    if outcome is not None:
        found = ratelimit_headers(outcome)
        if found:
            add_missing(response.headers, found)
    return response


def add_missing(headers, values: dict[str, str]) -> None:
    """``headers.setdefault`` for each value, straight into the store of
    Django's ``ResponseHeaders`` (``{lowercased name: (name, value)}``): its
    per-header charset and newline checks cost more than the rest of a leased
    request, and these values are printable ASCII by construction
    (``sf_string`` and integers). Any other headers object: its own API."""
    store = getattr(headers, "_store", None)
    if type(headers) is not ResponseHeaders or type(store) is not dict:
        for name, value in values.items():
            headers.setdefault(name, value)
        return
    for name, value in values.items():
        store.setdefault(name.lower(), (name, value))


def wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    if "json" in request.headers.get("Content-Type", "") and "html" not in accept:
        return True
    return "json" in accept and "html" not in accept


def blocked_response(request: HttpRequest, outcome: Outcome) -> HttpResponse:
    """The response for a blocked request: RATELIMIT['VIEW'], JSON or HTML."""
    view = conf.get("VIEW")
    if view:
        if isinstance(view, str):
            view = import_string(view)
        response = view(request, RateLimitExceeded(outcome))
    else:
        response = default_response(request, outcome)
    retry_after = outcome.retry_after
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, whole_seconds(retry_after)))
    return apply_headers(response, outcome)


def default_response(request: HttpRequest, outcome: Outcome) -> HttpResponse:
    policy, decision = outcome.blocking[0]
    if decision.reason == fallback.REASONS[fallback.CLOSED]:  # Redis failed
        message, status = fallback.CLOSED_MESSAGE, fallback.CLOSED_STATUS
    else:
        message = policy.spec.message or DEFAULT_MESSAGE
        status = policy.spec.status_code
    retry = outcome.retry_after
    body = {
        "detail": message,
        "policy": policy.name,
        "retry_after": None if retry is None else max(1, whole_seconds(retry)),
    }
    if wants_json(request):
        return JsonResponse(body, status=status)
    html = render_to_string("ratelimit_app/blocked.html", body, request=request)
    return HttpResponse(html, status=status)
