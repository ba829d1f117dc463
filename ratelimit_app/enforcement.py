"""Deciding one request: which policies apply, who the client is, one engine call.

Shared by the middleware and the decorator, sync and async.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.urls import Resolver404, resolve

from . import conf, lanes, limiter, metrics
from .addresses import client_address
from .identity import client_ip
from .limiter import RuleSpec
from .outcome import Outcome
from .policies import USER_KEYS as USER_KEYS  # where cli and explanation look
from .policies import CompiledPolicy, glob_to_regex
from .signals import rate_limited
from .types import Identity

logger = logging.getLogger("ratelimit_app")


# -- which policies apply ----------------------------------------------------


def skipped(request: HttpRequest) -> bool:
    """Requests never counted: limits off, OPTIONS, RATELIMIT['EXEMPT_PATHS']."""
    settings = conf.get_settings()  # once, not per setting: this runs per request
    if not settings["ENABLED"]:
        return True
    if request.method == "OPTIONS" and not settings["COUNT_OPTIONS"]:
        return True
    exempt = settings["EXEMPT_PATHS"]
    if not exempt:
        return False
    path = request.path_info
    return any(glob_to_regex(p).fullmatch(path) for p in exempt)


def route_of(request: HttpRequest) -> tuple[str | None, str | None]:
    """(url_name, view dotted path) of the request, resolving it if needed."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return None, None
    return match.view_name, match._func_path


def view_policy_name(request: HttpRequest) -> str | None:
    """The policy a ``@rate_limit`` decorator puts on the request's view."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return None
    view_class = getattr(match.func, "view_class", None)
    target = view_class.dispatch if view_class is not None else match.func
    return getattr(target, "rate_limit_policy", None)


# Paths longer than this are matched each time, so the cache stays small.
ROUTE_CACHE_PATH_LENGTH = 512
ROUTE_CACHE_SIZE = 1024


class Router:
    """One snapshot's route matching, memoized per (method, path).

    Only for snapshots whose enabled policies all match by path, glob or
    regex: then the match is a pure function of the method and the path. A
    url_name or view matcher needs ``resolve()``, which also depends on the
    urlconf and the active language (i18n patterns), so those snapshots are
    matched per request as before.
    """

    def __init__(self, policies: tuple[CompiledPolicy, ...]) -> None:
        self.policies = policies
        self.resolves = any(
            p.spec.enabled and (p.spec.url_name or p.spec.view) for p in policies
        )
        # lru_cache: bounded, thread-safe, and its lookup is in C.
        self.match = lru_cache(maxsize=ROUTE_CACHE_SIZE)(self._match)
        self.lane = lru_cache(maxsize=ROUTE_CACHE_SIZE)(self._lane)

    def _match(self, method: str, path: str) -> tuple[CompiledPolicy, ...]:
        return tuple(
            p
            for p in self.policies
            if p.spec.enabled
            and p.routed
            and p.matches_method(method)
            and p.matches_route(path, None, None)
        )

    def _lane(self, method: str, path: str) -> lanes.Plan | None:
        policies = self.match(method, path)
        return lanes.plan_for(policies) if policies else None


_router = Router(())


def lane_plan(
    request: HttpRequest, policies: Sequence[CompiledPolicy]
) -> lanes.Plan | None:
    """The lane plan for the request's route (``lanes``), when the policies
    matching it are all plain; None otherwise, or while the snapshot
    ``policies`` has no router yet (``routed_policies`` builds it)."""
    router = _memo_router(policies, request.path_info)
    return None if router is None else router.lane(request.method, request.path_info)


def routed_policies(
    request: HttpRequest, policies: Sequence[CompiledPolicy]
) -> list[CompiledPolicy]:
    """Enabled policies whose route matchers and methods match the request."""
    global _router
    if _router.policies is not policies and type(policies) is tuple:
        _router = Router(policies)  # a new snapshot (tuples are immutable)
    router = _memo_router(policies, request.path_info)
    if router is not None:
        return list(router.match(request.method, request.path_info))
    return match_routes(request, policies)


def _memo_router(policies, path: str) -> Router | None:
    """The router of snapshot ``policies`` when it may answer from its memo
    for ``path``: built, no matcher that resolves the URL, a short path."""
    router = _router
    if (
        router.policies is policies
        and not router.resolves
        and len(path) <= ROUTE_CACHE_PATH_LENGTH
    ):
        return router
    return None


def match_routes(
    request: HttpRequest, policies: Sequence[CompiledPolicy]
) -> list[CompiledPolicy]:
    """``routed_policies`` without the memo: resolves the URL when a matcher
    needs its name or view."""
    candidates = [
        p
        for p in policies
        if p.spec.enabled and p.routed and p.matches_method(request.method)
    ]
    if not candidates:
        return []
    url_name = view = None
    if any(p.spec.url_name or p.spec.view for p in candidates):
        url_name, view = route_of(request)
    return [p for p in candidates if p.matches_route(request.path_info, url_name, view)]


def pending(
    request: HttpRequest, policies: Sequence[CompiledPolicy | None]
) -> list[CompiledPolicy]:
    """The given policies that apply to the request and were not decided yet.

    Used where policies are named (decorator, DRF throttle): the middleware may
    have decided one already through a route matcher, and a request is counted
    once per policy.
    """
    if skipped(request):
        return []
    done = getattr(request, "ratelimit", None)
    decided = done.names if isinstance(done, Outcome) else set()
    return [
        p
        for p in policies
        if p is not None
        and p.spec.enabled
        and p.matches_method(request.method)
        and p.name not in decided
    ]


# -- who the client is ---------------------------------------------------------


def needs_user(policies: Sequence[CompiledPolicy]) -> bool:
    """True when building the rules reads request.user (sync-only in async views)."""
    return any(p.reads_user for p in policies)


def request_user(request: HttpRequest):
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


_groups_cache: OrderedDict = OrderedDict()
_GROUPS_CACHE_SIZE = 10_000


def user_groups(user) -> frozenset[str]:
    """The user's group names, cached per process for GROUPS_CACHE_SECONDS."""
    if user is None or not hasattr(user, "groups"):
        return frozenset()
    now = time.monotonic()
    cached = _groups_cache.get(user.pk)
    if cached and cached[0] > now:
        return cached[1]
    groups = frozenset(user.groups.values_list("name", flat=True))
    _groups_cache[user.pk] = (now + conf.get("GROUPS_CACHE_SECONDS"), groups)
    _groups_cache.move_to_end(user.pk)
    while len(_groups_cache) > _GROUPS_CACHE_SIZE:
        _groups_cache.popitem(last=False)
    return groups


def forget_groups(**kwargs) -> None:
    """Group membership changed in this process: drop the cached names."""
    _groups_cache.clear()


conf.on_change(forget_groups)


def build_rules(
    request: HttpRequest,
    policies: Sequence[CompiledPolicy],
    cost: int | Callable | None = None,
) -> tuple[list[CompiledPolicy], list[tuple[RuleSpec, Identity]]]:
    """(spec, identity) pairs for the policies that do not exempt this client."""
    # Exemptions match the client's own address, not its group (a /64); only
    # network exemptions read it, and formatting an address is not free.
    ip = ""
    if any(p.networks for p in policies):
        address = client_address(request)
        ip = str(address) if address is not None else ""
    user = request_user(request) if needs_user(policies) else None
    groups = frozenset()  # user_groups(None) is empty too
    if user is not None and any(p.needs_groups() for p in policies):
        groups = user_groups(user)
    if callable(cost):
        cost = cost(request)
    applied, items = [], []
    for policy in policies:
        if policy.is_exempt(ip, user, groups):
            continue
        applied.append(policy)
        items.append((policy.rule_spec(groups, cost), policy.identify(request)))
    return applied, items


# -- the engine call -------------------------------------------------------------


def check(
    request, policies, cost=None, *, consume: bool = True, lane: bool = True
) -> Outcome:
    """Evaluate every policy in one engine call (all-or-nothing); through
    their lane (``lanes``) unless ``lane`` is off (the middleware tried it)."""
    if lane and consume and cost is None:
        outcome = lanes.run(request, policies)
        if outcome is not None:
            return report(request, outcome)
    applied, items = build_rules(request, policies, cost)
    if not items:
        return Outcome()
    mode = "hit" if consume else "peek"
    fail_modes = [policy.fallback for policy in applied]
    decisions = limiter.default_limiter().decide(items, mode, fail_mode=fail_modes)
    return report(request, Outcome(applied, decisions, [spec for spec, _ in items]))


async def acheck(
    request, policies, cost=None, *, consume: bool = True, lane: bool = True
) -> Outcome:
    """The async twin; only reading request.user hops to a thread (so the
    lanes are not taken when a key reads it)."""
    if lane and consume and cost is None and not needs_user(policies):
        outcome = await lanes.arun(request, policies)
        if outcome is not None:
            return report(request, outcome)
    if needs_user(policies) or callable(cost):
        applied, items = await sync_to_async(build_rules)(request, policies, cost)
    else:
        applied, items = build_rules(request, policies, cost)
    if not items:
        return Outcome()
    mode = "hit" if consume else "peek"
    fail_modes = [policy.fallback for policy in applied]
    decisions = await limiter.default_limiter().adecide(
        items, mode, fail_mode=fail_modes
    )
    return report(request, Outcome(applied, decisions, [spec for spec, _ in items]))


def report(request: HttpRequest, outcome: Outcome) -> Outcome:
    """Log and signal every block and every shadow would-block."""
    for policy, decision in zip(outcome.policies, outcome.decisions, strict=True):
        if decision.allowed:
            continue
        logger.info(
            "ratelimit: %s %s by policy %r (%s) for %s %s",
            "would block" if decision.shadow else "blocked",
            request.method,
            policy.name,
            decision.reason,
            client_ip(request),
            request.path_info,
        )
        rate_limited.send(
            sender=policy.name,
            request=request,
            decision=decision,
            shadow=decision.shadow,
        )
    return outcome


def record(request: HttpRequest, outcome: Outcome) -> Outcome:
    """Attach the decisions to the request (middleware and decorators add up),
    and count them: every call records a request's decisions for new policies."""
    metrics.record_decisions(outcome)
    return attach(request, outcome)


def record_planned(request: HttpRequest, plan: lanes.Plan, outcome: Outcome) -> Outcome:
    """``record`` of an outcome of ``plan``'s lane; one whose every policy
    allowed is counted by policy name and has nothing to report."""
    if limiter.any_denied(outcome.decisions):
        return record(request, report(request, outcome))
    metrics.record_allowed(plan.allowed_results)
    return attach(request, outcome)


def attach(request: HttpRequest, outcome: Outcome) -> Outcome:
    """``request.ratelimit``: the first outcome, extended by later ones."""
    existing = getattr(request, "ratelimit", None)
    if isinstance(existing, Outcome):
        existing.extend(outcome)
        return existing
    request.ratelimit = outcome
    return outcome
