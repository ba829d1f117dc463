"""Global rate limits for Celery tasks, shared by every worker on every host.

Celery's own ``rate_limit`` task option is per worker process: ten workers at
``"100/m"`` run 1,000 tasks a minute. ``global_rate_limit`` keeps one counter in
Redis, so the rate holds however many workers and hosts run the task::

    @shared_task(bind=True, max_retries=3)
    @global_rate_limit("emails", rate="100/m")
    def send_email(self, address): ...

Before the task body runs, the limiter is hit. When over the rate, the task is
not run and not slept on: it is published again with a countdown (the denial's
``retry_after`` with decorrelated jitter, at most ``max_countdown``) and the
worker moves on. These deferrals keep ``request.retries`` as it was, so the
task's own ``max_retries`` budget is untouched; they are counted in the
``ratelimit_deferrals`` message header instead. Called directly or eagerly
(no worker to hand the task back to), the body waits with ``limiter.acquire``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

from celery._state import get_current_task
from celery.exceptions import Retry

from .. import limiter
from ..fallback import FailMode
from ..types import Identity, Rule

# Message headers of a deferred task: how often it was deferred, and the last
# countdown (the decorrelated jitter grows from it).
DEFERRALS = "ratelimit_deferrals"
LAST_COUNTDOWN = "ratelimit_countdown"
# Longer countdowns are re-checked at this interval: a worker holds a task with
# an ETA in memory, and the Redis broker redelivers tasks unacknowledged past
# its visibility timeout (1 hour by default).
MAX_COUNTDOWN = 300.0

IdentityArg = Identity | Callable[..., Identity]


def global_rate_limit(
    scope: str,
    rate: str,
    *,
    identity: IdentityArg = "global",
    algorithm: str = "gcra",
    cost: int = 1,
    burst: int | None = None,
    fail_mode: FailMode = None,
    max_countdown: float = MAX_COUNTDOWN,
):
    """Run the decorated task body only within ``rate``, across all workers.

    Put it below ``@shared_task``/``@app.task`` (bound or not). ``identity`` is
    a str/bytes/int, or a callable given the task's arguments (without
    ``self``) that returns one: one rate per identity. Bad arguments raise
    ValueError here, at import time.
    """
    rule = Rule(scope, "check", rate, algorithm, cost, burst)
    if cost > rule.capacity:
        raise ValueError(
            f"cost {cost} exceeds the capacity {rule.capacity} of {rate!r}: "
            "the task could never run; raise burst or lower cost."
        )
    if max_countdown <= 0:
        raise ValueError(f"max_countdown must be > 0, got {max_countdown!r}.")
    options = {"algorithm": algorithm, "cost": cost, "burst": burst}
    options["fail_mode"] = fail_mode

    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def limited(*args: Any, **kwargs: Any) -> Any:
            task = get_current_task()
            own = args[1:] if task is not None and args[:1] == (task,) else args
            who = identity(*own, **kwargs) if callable(identity) else identity
            if task is None or _runs_inline(task.request):
                limiter.acquire(scope, who, rate, **options)
                return run(*args, **kwargs)
            decision = limiter.hit(scope, who, rate, **options)
            if not decision.allowed:
                raise defer(task, scope, decision.retry_after, max_countdown)
            return run(*args, **kwargs)

        return limited

    return decorate


def _runs_inline(request) -> bool:
    """Called as a function or eagerly: no broker to hand the task back to."""
    return bool(request.called_directly or request.is_eager)


def defer(task, scope: str, retry_after: float | None, max_countdown: float) -> Retry:
    """Publish the running task again after a countdown, keeping its retries;
    returns the Retry to raise (the worker logs it and acknowledges the
    message)."""
    request = task.request
    headers = dict(request.headers or {})
    deferrals = int(headers.get(DEFERRALS) or 0) + 1
    previous = float(headers.get(LAST_COUNTDOWN) or 0)
    wait = max_countdown if retry_after is None else retry_after
    countdown = deferral_countdown(wait, previous, max_countdown)
    headers.update({DEFERRALS: deferrals, LAST_COUNTDOWN: countdown})
    signature = task.signature_from_request(
        request, countdown=countdown, headers=headers, retries=request.retries
    )
    signature.apply_async()
    return Retry(
        f"rate limited by global_rate_limit({scope!r}); deferral {deferrals}, "
        f"retry in {countdown:.3f}s",
        when=countdown,
    )


def deferral_countdown(retry_after: float, previous: float, cap: float) -> float:
    """Decorrelated jitter: uniform between ``retry_after`` and three times the
    previous countdown (at first, three times ``retry_after``), at most ``cap``.

    Tasks denied together spread out over later slots instead of all coming
    back at the same moment, so a backlog does not retry in lockstep.
    """
    low = min(retry_after, cap)
    high = min(max(3 * (previous or retry_after), low), cap)
    return random.uniform(low, high)


def deferrals(request) -> int:
    """How many times the task of ``request`` was deferred by the limit."""
    return int((request.headers or {}).get(DEFERRALS) or 0)
