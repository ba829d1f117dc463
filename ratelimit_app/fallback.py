"""The only place that decides what happens when Redis fails: open, closed, local.

``guard`` runs a Redis decision through the circuit breaker; on a Redis error
(or while the breaker is open) each rule's fail mode decides instead:

- ``open``: allowed (``reason="fallback_open"``);
- ``closed``: denied, answered with 503 and Retry-After (``"fallback_closed"``);
- ``local``: an in-process GCRA at the policy's fallback rate (default: its own
  rate), per process, over at most ``FALLBACK_MAX_KEYS`` clients (LRU)
  (``"fallback_local"``).

Each fallback is counted (``metrics.record_fallback``) and logged at most once
per ``FAILURE_LOG_INTERVAL`` per error class, so an outage does not flood logs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from . import conf, metrics
from .breaker import CircuitBreaker
from .keys import identity_bytes
from .rates import Rate, to_rate
from .types import Decision, Identity

logger = logging.getLogger("ratelimit_app")

OPEN, CLOSED, LOCAL = conf.FAIL_MODES
REASONS = {
    OPEN: "fallback_open",
    CLOSED: "fallback_closed",
    LOCAL: "fallback_local",
}
# The status of a response denied by the "closed" fail mode.
CLOSED_STATUS = 503
CLOSED_MESSAGE = "Rate limiting is unavailable; try again shortly"


def is_fallback(decision: Decision) -> bool:
    """True when a fail mode took the decision, not Redis."""
    return decision.reason in _FALLBACK_REASONS


_FALLBACK_REASONS = frozenset(REASONS.values())


@dataclass(frozen=True, slots=True)
class Fallback:
    """A rule's fail mode; ``rate`` (local only) None means the rule's own."""

    mode: str
    rate: Rate | None = None


def fallback_of(mode: str, rate: str | Rate | None = None) -> Fallback:
    """Validate a fail mode and its fallback rate; ValueError says the fix."""
    if mode not in conf.FAIL_MODES:
        raise ValueError(
            f"fail_mode must be one of {', '.join(conf.FAIL_MODES)}, not {mode!r}"
        )
    return Fallback(mode, to_rate(rate) if rate else None)


# Whatever RATELIMIT['FAIL_MODE'] says, with the rule's own rate.
DEFAULT = Fallback("")

FailMode = str | Fallback | Sequence[str | Fallback] | None


def fallbacks_for(fail_mode: FailMode, count: int) -> list[Fallback]:
    """One Fallback per rule; None (or a mode "") is RATELIMIT['FAIL_MODE']."""
    if isinstance(fail_mode, str | Fallback) or fail_mode is None:
        fail_mode = [fail_mode] * count
    found = [_resolved(f) for f in fail_mode]
    if len(found) != count:
        raise ValueError(f"fail_mode lists {len(found)} modes for {count} rules")
    return found


def _resolved(fail_mode: str | Fallback | None) -> Fallback:
    if isinstance(fail_mode, Fallback):
        if fail_mode.mode:
            return fail_mode
        return Fallback(conf.fail_mode(), fail_mode.rate)
    return fallback_of(fail_mode or conf.fail_mode())


def check_fail_mode(fail_mode: FailMode) -> None:
    """Refuse an unknown mode string before Redis is called (cheap)."""
    if isinstance(fail_mode, str) and fail_mode not in conf.FAIL_MODES:
        fallback_of(fail_mode)  # raises ValueError naming the choices


# -- the guard around a Redis decision -------------------------------------------


class BreakerOpen(RedisError):
    """Redis was not called: the circuit breaker is open."""


def guard(call: Callable[[], list[Decision]], items, mode, fail_mode, breaker):
    """``call()`` through the breaker, or the fail modes when Redis fails."""
    check_fail_mode(fail_mode)
    if not breaker.allow():
        return decide(items, mode, fail_mode, BreakerOpen(), breaker)
    try:
        decisions = call()
    except RedisError as exc:
        return _failed(items, mode, fail_mode, exc, breaker)
    breaker.record_success()
    return decisions


async def aguard(
    call: Callable[[], Awaitable[list[Decision]]], items, mode, fail_mode, breaker
):
    """The asyncio twin of ``guard``."""
    check_fail_mode(fail_mode)
    if not breaker.allow():
        return decide(items, mode, fail_mode, BreakerOpen(), breaker)
    try:
        decisions = await call()
    except RedisError as exc:
        return _failed(items, mode, fail_mode, exc, breaker)
    breaker.record_success()
    return decisions


def _failed(items, mode, fail_mode, exc: RedisError, breaker: CircuitBreaker):
    if breaker.record_failure():
        logger.error(
            "ratelimit: circuit breaker open after %d Redis errors in %ss: Redis "
            "is not called for %ss, fail modes decide meanwhile",
            breaker.threshold,
            breaker.window,
            breaker.cooldown,
        )
    failure_log.report(exc, fallbacks_for(fail_mode, len(items)))
    return decide(items, mode, fail_mode, exc, breaker)


# -- deciding without Redis -------------------------------------------------------


def decide(items, mode: str, fail_mode: FailMode, error, breaker):
    """One Decision per (spec, identity) item, by each item's fail mode.

    All-or-nothing like the script: local rules consume only when no
    enforcing rule (a local or a closed one) denies.
    """
    fallbacks = fallbacks_for(fail_mode, len(items))
    retry_after = breaker.retry_after()
    decisions = [
        _one(spec, identity, fallback, retry_after, consume=False)
        for (spec, identity), fallback in zip(items, fallbacks, strict=True)
    ]
    if mode == "hit" and not any(d.blocking for d in decisions):
        decisions = [
            _one(spec, identity, fallback, retry_after, consume=True)
            if fallback.mode == LOCAL
            else decision
            for (spec, identity), fallback, decision in zip(
                items, fallbacks, decisions, strict=True
            )
        ]
    for (spec, _), fallback in zip(items, fallbacks, strict=True):
        metrics.record_fallback(spec.scope, fallback.mode)
    return decisions


def _one(spec, identity, fallback: Fallback, retry_after: float, consume: bool):
    if fallback.mode == OPEN:
        return Decision(
            True, spec.capacity, spec.capacity, 0.0, 0.0, spec.scope,
            REASONS[OPEN], spec.shadow,
        )  # fmt: skip
    if fallback.mode == CLOSED:
        return Decision(
            False, spec.capacity, 0, retry_after, retry_after, spec.scope,
            REASONS[CLOSED], spec.shadow,
        )  # fmt: skip
    rate = fallback.rate or spec.rate
    capacity = spec.capacity if fallback.rate is None else rate.limit
    cost = spec.argv[4]
    return local_limiter().decide(spec, identity, rate, capacity, cost, consume)


# -- the in-process limiter ("local") ------------------------------------------------


class LocalLimiter:
    """GCRA in process memory, over at most ``max_keys`` clients (LRU).

    Keys are (scope, 16-byte hash of the identity), so a huge identity costs
    no more memory than a small one.
    """

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic):
        self.max_keys = max_keys
        self.clock = clock
        self._tats: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tats)

    def decide(
        self, spec, identity: Identity, rate: Rate, capacity: int, cost, consume
    ):
        interval = rate.period_ms / rate.limit  # ms per unit
        now = self.clock() * 1000
        key = (spec.scope, _digest(identity))
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            new_tat = tat + cost * interval
            allowed = cost <= capacity and new_tat - now <= capacity * interval
            if allowed and consume:
                self._remember(key, new_tat)
        used = (new_tat if allowed else tat) - now
        remaining = max(math.floor((capacity * interval - used) / interval), 0)
        if allowed:
            retry = 0.0
        elif cost > capacity:
            retry = None
        else:
            retry = (new_tat - now - capacity * interval) / 1000
        return Decision(
            allowed, capacity, remaining, used / 1000, retry, spec.scope,
            REASONS[LOCAL], spec.shadow,
        )  # fmt: skip

    def _remember(self, key: tuple[str, bytes], tat: float) -> None:
        self._tats[key] = tat
        self._tats.move_to_end(key)
        while len(self._tats) > self.max_keys:
            self._tats.popitem(last=False)


def _digest(identity: Identity) -> bytes:
    return hashlib.blake2b(identity_bytes(identity), digest_size=16).digest()


_local: LocalLimiter | None = None
_local_lock = threading.Lock()


def local_limiter() -> LocalLimiter:
    """This process's in-process limiter, sized by FALLBACK_MAX_KEYS."""
    global _local
    if _local is None:
        with _local_lock:
            if _local is None:
                _local = LocalLimiter(conf.number("FALLBACK_MAX_KEYS"))
    return _local


# -- logging without flooding --------------------------------------------------------


class FailureLog:
    """One log line per error class per FAILURE_LOG_INTERVAL, with the count
    of the ones left out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, error: BaseException, fallbacks: list[Fallback]) -> None:
        kind = type(error).__name__
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < conf.number("FAILURE_LOG_INTERVAL"):
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        modes = ", ".join(sorted({f.mode for f in fallbacks}))
        logger.error(
            "ratelimit: Redis failed (%s: %s); fail mode %s applied "
            "(%d more %s errors since the last report). Check that Redis is "
            "up and reachable at RATELIMIT['REDIS_URL'].",
            kind,
            error,
            modes,
            suppressed,
            kind,
        )


failure_log = FailureLog()


def forget(**kwargs) -> None:
    """Settings changed: a fresh local limiter and failure log."""
    global _local, failure_log
    with _local_lock:
        _local = None
    failure_log = FailureLog()


conf.on_change(forget)
