"""``@rate_limit``: a named policy, or one declared in code, on any view."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from .enforcement import acheck, check, pending, record
from .headers import apply_headers, blocked_response
from .policies import CompiledPolicy, PolicySpec
from .snapshot import aget_policies, get_policies, register_code_policy


def rate_limit(
    name: str | None = None,
    *,
    rate: str | None = None,
    key: str = "ip",
    algorithm: str = "gcra",
    methods: Iterable[str] | None = None,
    block: bool = True,
    cost: int | Callable[[HttpRequest], int] = 1,
    burst: int | None = None,
    count_when: Callable | None = None,
    lease: bool = False,
):
    """Limit a view by the policy ``name``, or by one declared here.

    With ``rate``, the policy is registered as a code default: settings and
    the admin can override it by name. ``block=False`` only annotates
    ``request.ratelimit``. ``count_when(response)`` checks before the view and
    counts after it, only when it returns True (e.g. failed logins).
    ``lease=True`` lets each process admit from units leased in advance (see
    ratelimit_app.leases; fixed_window, token_bucket and gcra).
    """
    if name is None and rate is None:
        raise ImproperlyConfigured(
            "@rate_limit needs a policy name (@rate_limit('login')) or a rate "
            "(@rate_limit(rate='5/m'))."
        )

    def decorator(view):
        if isinstance(view, type):  # a class-based view: limit dispatch
            view.dispatch = decorator(view.dispatch)
            return view
        policy_name = name or f"{view.__module__}.{view.__qualname__}".replace(
            "<", ""
        ).replace(">", "")
        if rate is not None:
            spec = PolicySpec(
                name=policy_name,
                rate=rate,
                key=key,
                algorithm=algorithm,
                burst=burst,
                cost=1 if callable(cost) else cost,
                methods=",".join(methods or ()),
                lease=lease,
                source="code",
            )
            register_code_policy(spec, f"@rate_limit on {view.__qualname__}")
        limiter = _Guard(
            policy_name, block, cost if callable(cost) else None, count_when
        )
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args, **kwargs):
                return await limiter.arun(view, args, kwargs)

            async_wrapper.rate_limit_policy = policy_name
            return async_wrapper

        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            return limiter.run(view, args, kwargs)

        wrapper.rate_limit_policy = policy_name  # for the admin's explain page
        return wrapper

    return decorator


def _request_of(args) -> HttpRequest:
    """Function views get the request first; methods get it after self."""
    for arg in args[:2]:
        if isinstance(arg, HttpRequest) or hasattr(arg, "META"):
            return arg
    raise TypeError("@rate_limit: the decorated callable was not given a request.")


class _Guard:
    """What the decorator does around one view call."""

    def __init__(self, name, block, cost, count_when) -> None:
        self.name, self.block, self.cost, self.count_when = (
            name,
            block,
            cost,
            count_when,
        )

    def pending(self, request, policies) -> list[CompiledPolicy]:
        named = next((p for p in policies if p.name == self.name), None)
        return pending(request, [named])

    def run(self, view, args, kwargs):
        request = _request_of(args)
        policies = self.pending(request, get_policies())
        if not policies:
            return view(*args, **kwargs)
        counting_later = self.count_when is not None
        outcome = record(
            request, check(request, policies, self.cost, consume=not counting_later)
        )
        if outcome.blocked and self.block:
            return blocked_response(request, outcome)
        response = view(*args, **kwargs)
        if counting_later and self.count_when(response):
            check(request, policies, self.cost)
        return apply_headers(response, outcome)

    async def arun(self, view, args, kwargs):
        request = _request_of(args)
        policies = self.pending(request, await aget_policies())
        if not policies:
            return await view(*args, **kwargs)
        counting_later = self.count_when is not None
        outcome = record(
            request,
            await acheck(request, policies, self.cost, consume=not counting_later),
        )
        if outcome.blocked and self.block:
            return blocked_response(request, outcome)
        response = await view(*args, **kwargs)
        if counting_later and self.count_when(response):
            await acheck(request, policies, self.cost)
        return apply_headers(response, outcome)
