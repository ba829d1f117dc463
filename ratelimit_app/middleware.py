"""RateLimitMiddleware: every enabled policy whose route matches, sync or async."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from .enforcement import (
    acheck,
    check,
    lane_plan,
    record,
    record_planned,
    routed_policies,
    skipped,
)
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
        if skipped(request):
            return self.get_response(request)
        policies = get_policies()
        # A route whose policies are all plain: its lane (see lanes).
        plan = lane_plan(request, policies)
        if plan is not None:
            outcome = plan.run(request)
            if outcome is not None:
                return self.respond(request, record_planned(request, plan, outcome))
        outcome = None
        policies = routed_policies(request, policies)
        if policies:
            outcome = record(request, check(request, policies, lane=plan is None))
        return self.respond(request, outcome)

    def respond(self, request, outcome):
        """The policy's response when blocked, else the view's, with headers."""
        if outcome is not None and outcome.blocked:
            return blocked_response(request, outcome)
        return apply_headers(self.get_response(request), outcome)

    async def __acall__(self, request):
        if skipped(request):
            return await self.get_response(request)
        policies = await aget_policies()
        plan = lane_plan(request, policies)
        if plan is not None and not plan.reads_user:  # request.user is sync
            outcome = await plan.arun(request)
            if outcome is not None:
                return await self.arespond(
                    request, record_planned(request, plan, outcome)
                )
        outcome = None
        policies = routed_policies(request, policies)
        if policies:
            outcome = record(
                request, await acheck(request, policies, lane=plan is None)
            )
        return await self.arespond(request, outcome)

    async def arespond(self, request, outcome):
        """The asyncio twin of ``respond``."""
        if outcome is not None and outcome.blocked:
            return blocked_response(request, outcome)
        return apply_headers(await self.get_response(request), outcome)
