"""The local deny cache: a client Redis denied is denied again in-process until its deadline.

When the decision script denies a rule (reason ``"limit"``, enforcing, not a
fallback) with ``retry_after = t``, the process remembers the denial until
``t`` on its monotonic clock, in milliseconds, keyed by the rule's state key
and everything the script was told about the rule (algorithm, rate, capacity,
**cost**, shadow, scope). A denial is therefore only ever reused for the same cost:
a cheaper request still asks Redis. Until the deadline, a call in which a
remembered denial covers one of its enforcing rules is answered here without
Redis: all-or-nothing means such a call consumes nothing anyway.

What a local answer holds:

* the remembered rule: denied, ``reason="limit"``, ``remaining`` as Redis
  said at the denial, ``retry_after`` and ``reset_after`` counting down from
  the remembered deadlines (whole milliseconds);
* a shadow rule with a remembered would-be denial: the same, ``shadow=True``
  (counted as shadow-blocked, as the script would). Shadow denials are kept
  for this only: they never make a call local by themselves;
* every other rule of the call: ``reason="not_consumed"`` (allowed, nothing
  consumed) with ``remaining=0`` and zero waits: the call did not ask Redis,
  so their state is unknown and 0 never promises more than there is.

A leased rule's denial (see leases) is answered locally for at most
``LEASE_MAX_SECONDS``, with the real ``retry_after``: units other processes
give back may be admitted before it.

Invalidation: a reset (``Limiter.reset``, the admin, ``ratelimit_reset``,
``testing.reset_counters``/``reset_all``) writes a fresh random token to the
epoch key ``<prefix>{policies}:epoch`` and clears this process's cache; a
policy edit (exemptions included) publishes a new snapshot. Every process
reads the epoch key with the snapshot's version (one MGET per
``POLICY_REFRESH_INTERVAL``) and drops everything when either changed. A
local answer needs an epoch read younger than the interval: a process that
does not refresh policies (``limiter.hit`` alone) reads the key itself, once
per interval, and only when it is about to answer locally.

Locally denied requests are still counted: the blocked (or shadow) count, the
distinct clients HyperLogLog and the offenders set, exactly as the script
would, through ``local_usage`` (batched into Redis every second, never lost
but by a killed process's last second).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from . import conf
from .local_usage import buffer, now_ms
from .types import Decision

# Seconds the epoch key lives after a reset (every key has a TTL); its expiry
# only makes every process drop its denials once more.
EPOCH_TTL = 7 * 24 * 3600


def epoch_key(prefix: str) -> str:
    """Rewritten on every reset; beside the snapshot keys (same hash tag)."""
    return f"{prefix}{{policies}}:epoch"


@dataclass(frozen=True, slots=True)
class Denial:
    deadline: float  # monotonic ms until which this process answers locally
    retry_at: float  # monotonic ms when Redis would admit this cost again
    reset_at: float  # monotonic ms when the rule's state is back to full
    remaining: int


class DenyCache:
    """Denials by (state key, rule argv), LRU-bounded; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, Denial] = OrderedDict()
        self._epochs: dict[str, tuple[object, float]] = {}
        self._known: dict[str, float] = {}  # epoch key -> first read
        self._cleared_at = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    # -- answering -------------------------------------------------------------

    def lookup(self, items, keys, now: float) -> list[Decision] | None:
        """Decisions for the call if a live denial covers an enforcing rule."""
        entries = self._entries
        if not entries:
            return None
        found = {}
        # Reads need no lock (a dict lookup is atomic); only expiry writes.
        for index, (spec, _) in enumerate(items):
            key = (keys[index], spec.argv)
            entry = entries.get(key)
            if entry is None:
                continue
            if entry.deadline <= now:
                self._expire(key, entry)
            else:
                found[index] = entry
        if not found or all(items[i][0].shadow for i in found):
            return None
        return [
            _denied(spec, found[i], now) if i in found else not_consumed(spec)
            for i, (spec, _) in enumerate(items)
        ]

    def _expire(self, key: tuple, entry: Denial) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]

    def remember(self, items, keys, decisions, started: float, epoch: str) -> None:
        """Keep the "limit" denials of a reply sent at ``started``, if the
        ``epoch`` key was read before it (so a later change to it is seen)."""
        fresh = [
            (index, d)
            for index, d in enumerate(decisions)
            if d.reason == "limit" and d.retry_after
        ]
        if not fresh:
            return
        cap = conf.get("DENY_CACHE_MAX_KEYS")
        with self._lock:
            if started < self._cleared_at:  # the reply may predate a reset
                return
            if self._known.get(epoch, math.inf) > started:
                return
            for index, d in fresh:
                spec = items[index][0]
                retry_at = started + d.retry_after * 1000
                self._entries[(keys[index], spec.argv)] = Denial(
                    _kept_until(spec, retry_at, started),
                    retry_at,
                    started + d.reset_after * 1000,
                    d.remaining,
                )
                self._entries.move_to_end((keys[index], spec.argv))
            while len(self._entries) > cap:
                self._entries.popitem(last=False)

    # -- invalidation ----------------------------------------------------------

    def fresh(self, key: str, now: float) -> bool:
        """Was the epoch key read within the refresh interval?"""
        seen = self._epochs.get(key)
        interval = conf.get("POLICY_REFRESH_INTERVAL") * 1000
        return seen is not None and now - seen[1] < interval

    def known(self, key: str) -> bool:
        """Was the epoch key ever read? (Denials are kept only after that.)"""
        return key in self._known

    def observe(self, key: str, value: object, started: float) -> None:
        """The epoch key read at ``started`` held ``value``; clear if it changed."""
        with self._lock:
            seen = self._epochs.get(key)
            if seen is not None and seen[0] != value:
                self._clear()
            if seen is None or started > seen[1]:
                self._epochs[key] = (value, started)
            self._known.setdefault(key, started)

    def clear(self) -> None:
        """Drop every denial (a reset or a policy edit in this process)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._entries.clear()
        self._cleared_at = now_ms()

    # -- usage counts ----------------------------------------------------------

    def count(self, limiter, items, keys, decisions) -> None:
        """Count what the script would have for a locally denied call."""
        if not limiter.usage_ttl:
            return
        for index, decision in enumerate(decisions):
            if decision.reason == "limit":
                spec, identity = items[index]
                metric = "s" if decision.shadow else "b"
                label = limiter._label(identity)
                buffer.add(limiter, keys[index], spec.scope, metric, 1, label)


def _kept_until(spec, retry_at: float, started: float) -> float:
    """A leased rule's denial is kept for at most LEASE_MAX_SECONDS: other
    processes give unused units back within that (plus a flush), which Redis
    may admit before ``retry_at``."""
    if not spec.lease:
        return retry_at
    return min(retry_at, started + conf.lease_settings()[0])


def _denied(spec, entry: Denial, now: float) -> Decision:
    return Decision(
        False,
        spec.capacity,
        entry.remaining,
        math.ceil(max(entry.reset_at - now, 0)) / 1000,
        math.ceil(entry.retry_at - now) / 1000,
        spec.scope,
        "limit",
        spec.shadow,
    )


def not_consumed(spec) -> Decision:
    return Decision(
        True, spec.capacity, 0, 0.0, 0.0, spec.scope, "not_consumed", spec.shadow
    )


cache = DenyCache()
