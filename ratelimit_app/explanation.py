"""Explaining a request: the policies that match it, whom each counts, live usage.

Shared by the admin's explain page and ``manage.py ratelimit_explain``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.utils.translation import gettext
from redis.exceptions import RedisError

from . import limiter
from .enforcement import (
    USER_KEYS,
    build_rules,
    pending,
    routed_policies,
    view_policy_name,
)
from .fallback import is_fallback
from .identity import MISSING
from .policies import CompiledPolicy
from .snapshot import store
from .types import Decision, Identity

# When Redis fails, the fail modes answer a peek: those are not live usage.
REDIS_UNAVAILABLE = (
    "Redis did not answer (a fail mode answered instead); "
    "run manage.py ratelimit_doctor"
)


@dataclass
class Row:
    """One matching policy of an explained request."""

    policy: CompiledPolicy
    client: str = ""
    exempt: bool = False
    rule: tuple | None = None  # (RuleSpec, identity), as the middleware builds
    usage: Decision | None = None
    error: str = ""
    pk: int | None = None

    @property
    def rate(self) -> str:
        """The policy's rate, or the group tier's rate that applies instead."""
        spec = self.policy.spec
        if self.rule is not None and self.rule[0].rate != self.policy.rate:
            return f"{self.rule[0].rate} (group tier; policy: {spec.rate})"
        return spec.rate

    @property
    def algorithm(self) -> str:
        """The policy's algorithm, and whether its units are leased to processes."""
        if self.policy.leases:
            return gettext("%(algorithm)s, leased") % {
                "algorithm": self.policy.spec.algorithm
            }
        return self.policy.spec.algorithm


def fake_request(path: str, method: str, ip: str, user=None) -> HttpRequest:
    """A request as the middleware would see it."""
    request = HttpRequest()
    request.method = method
    request.path = request.path_info = path
    request.META["REMOTE_ADDR"] = ip
    request.user = user or AnonymousUser()
    return request


def explained_policies(request: HttpRequest) -> list[CompiledPolicy]:
    """What the middleware applies, then the view's @rate_limit policy."""
    policies = store.policies()
    matched = routed_policies(request, policies)
    name = view_policy_name(request)
    decorated = [p for p in policies if p.name == name]
    return matched + [p for p in pending(request, decorated) if p not in matched]


def explain(request: HttpRequest, username: str = "") -> tuple[list[Row], str]:
    """The enabled routed policies matching ``request``, in priority order,
    with the client each counts and its live usage (one Redis call, no write).

    Returns the rows and a Redis error message ("" when usage was read).
    """
    rows = [explain_policy(p, request, username) for p in explained_policies(request)]
    return rows, peek_rows(rows)


def peek_rows(rows: list[Row]) -> str:
    """Fill in each counted row's live usage; return a Redis error or ""."""
    counted = [row for row in rows if row.rule is not None]
    if not counted:
        return ""
    try:
        usage = limiter.default_limiter().decide([row.rule for row in counted], "peek")
    except RedisError as exc:
        return str(exc)
    if any(is_fallback(decision) for decision in usage):
        return REDIS_UNAVAILABLE
    for row, decision in zip(counted, usage, strict=True):
        row.usage = decision
    return ""


def explain_policy(policy: CompiledPolicy, request: HttpRequest, username="") -> Row:
    """One policy's row: the client it counts, exempt or not, the rule it applies."""
    row = Row(policy)
    try:  # the middleware's own code, one policy at a time
        applied, rules = build_rules(request, [policy])
        identity = policy.identify(request)
        row.client = describe_identity(policy, identity, username)
    except Exception as exc:  # e.g. a callable key failing on a fake request
        row.error = cannot_identify(exc)
        return row
    row.exempt = not applied
    row.rule = rules[0] if rules else None
    return row


def describe_identity(policy: CompiledPolicy, identity: Identity, username="") -> str:
    """What may be shown of the client a policy counts; never a secret value."""
    key = policy.spec.key
    if identity == MISSING:
        return f"no {key} value (one bucket shared by all such requests)"
    if key == "ip":
        return f"ip {identity}"
    if key in USER_KEYS:
        if username and identity.startswith("user:"):
            return f"{identity} ({username})"
        return str(identity)
    return f"the value of {key} (hidden)"


def cannot_identify(exc: Exception) -> str:
    message = gettext("Cannot tell the client of this request: %(error)s")
    return message % {"error": f"{type(exc).__name__}: {exc}"}
