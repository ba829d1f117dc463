"""RateLimitMiddleware: every enabled policy whose route matches, sync or async."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from .enforcement import acheck, check, record, routed_policies, skipped
from .headers import apply_headers, blocked_response
from .snapshot import aget_policies, get_policies


class RateLimitMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        outcome = None
        if not skipped(request):
            policies = routed_policies(request, get_policies())
            if policies:
                outcome = record(request, check(request, policies))
                if outcome.blocked:
                    return blocked_response(request, outcome)
        return apply_headers(self.get_response(request), outcome)

    async def __acall__(self, request):
        outcome = None
        if not skipped(request):
            policies = routed_policies(request, await aget_policies())
            if policies:
                outcome = record(request, await acheck(request, policies))
                if outcome.blocked:
                    return blocked_response(request, outcome)
        return apply_headers(await self.get_response(request), outcome)
