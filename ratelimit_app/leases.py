"""Token leasing: a process takes k units of a rule at once and admits from them locally.

A rule with ``lease`` on (a policy's "lease" flag; fixed_window, token_bucket
and gcra) is decided like any other when the process holds no units for it:
the decision script runs in "lease" mode and, when the rule passes, consumes
``min(k, available)`` units instead of the request's cost (see driver.lua).
The process keeps the units beyond the cost as a lease and admits the next
requests of that (rule, identity) from it, without calling Redis, until the
units are used or the lease ends.

Bounds (L = ``LEASE_MAX_SECONDS``, P = processes holding leases):

* a lease ends L after it was asked for, and a fixed_window lease also at its
  window's end (the script says how long the window has left);
* leased units are consumed in Redis when granted, so a **fixed_window never
  admits more than its limit in a window**, and a **token_bucket or gcra
  admits over any interval at most what the bucket allows over that interval
  extended by L** (each admitted unit was taken at most L before);
* the price is under-admission: units sitting unused in other processes'
  leases. A lease holds at most ``LEASE_MAX_SHARE`` of the capacity, so at any
  moment at most P x that share is held back. Unused units are given back when
  a lease ends (by the background thread within a second, or when a new
  lease replaces it): a fixed_window takes them back within the same window;
  a bucket takes back only the part of the lease still ahead of now (the
  mark), never more generously than if the units had never been leased.
  Units not given back (a fixed window that ended first, a killed process)
  are lost to that window or refill: under-admission only.

k adapts to the process's recent rate on the rule: about the units it admits
in half of L, doubling at most per grant (slow start), at least the cost and
at most ``LEASE_MAX_SHARE`` x capacity; a key with no grant for two lease
lives starts again from its cost. A rule seen once asks for its cost
only: a quiet key (a per-IP limit with a few requests per second) stays an
ordinary exact call per request.

All-or-nothing still holds for a call mixing leased and other rules: the
leased units are taken locally first and put back when Redis blocks the call.
Requests admitted from a lease are counted for the usage stats through
``local_usage``. Locally, a leased decision reports ``remaining`` as Redis
left it at the grant plus the units still in the lease. A forked child starts
with no leases (the parent's units are the parent's).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from redis.exceptions import RedisError

from . import conf
from .algorithms import LEASE_REPLY_FIELDS, script_for
from .backends.redis import run_script
from .deny_cache import not_consumed
from .local_usage import BUCKET_MS, buffer, now_ms, row_of
from .types import Decision

logger = logging.getLogger("ratelimit_app")

# A lease aims to last this share of LEASE_MAX_SECONDS at the recent rate.
TARGET_SHARE = 0.5
# A key with no grant for this many lease lives starts again from its cost.
IDLE_LIVES = 2
# An entry with no units and no grant for this long is forgotten.
IDLE_MS = 60_000


@dataclass(slots=True, eq=False)
class Lease:
    """Units one process holds for one rule and identity, and its recent rate."""

    units: int = 0  # left to admit here
    deadline: float = -math.inf  # monotonic ms; none admitted at or after
    mark: int = 0  # the grant's mark (Redis ms), for the give-back
    remaining: int = 0  # what Redis had left after the grant
    reset_at: float = 0.0  # monotonic ms when the state is full again
    granted_at: float = -math.inf  # monotonic ms the last grant was asked for
    used: int = 0  # units admitted since, the grant's own cost included
    rate: float = 0.0  # units per ms, smoothed over grants
    wanted: int = 0  # units asked for at the last grant
    limiter: object = None  # whose clock the give-back reads
    # The Redis that granted the units, where they go back: a limiter built
    # from settings resolves its client anew, and settings may have changed.
    client: object = None
    counts: tuple = ()  # local_usage rows of an admission: "u", or "a" and "c"
    # Admissions of ``take_all`` not yet in the usage buffer, all in one
    # 100 ms bucket: counted here under the table's lock, not per request.
    pending: int = 0
    pending_cost: int = 0
    bucket: int = -1


class LeaseTable:
    """This process's leases by (state key, rule argv), LRU-bounded; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: OrderedDict[tuple, Lease] = OrderedDict()
        self._returns: list[tuple] = []  # (lease, key, argv, units)
        self._unfolded: list[tuple] = []  # usage of leases that left the table

    def __len__(self) -> int:
        return len(self._leases)

    def units_held(self) -> int:
        return sum(lease.units for lease in self._leases.values())

    # -- the request path ------------------------------------------------------

    def take(self, items, keys, now: float) -> dict[int, Lease]:
        """Take each leased rule's cost from a live lease where one has it."""
        taken = {}
        with self._lock:
            for index, (spec, _) in enumerate(items):
                if not spec.lease:
                    continue
                lease = self._leases.get((keys[index], spec.argv))
                cost = spec.argv[4]
                if lease is not None and lease.units >= cost and now < lease.deadline:
                    lease.units -= cost
                    lease.used += cost
                    taken[index] = lease
        return taken

    def take_all(self, ids, specs, now: float) -> list[Lease] | None:
        """Every rule's cost from its live lease, admitted and counted for the
        stats, or nothing taken (None). ``take`` for a call whose rules are
        all leased, which needs no Redis answer before it counts; ``ids`` are
        the rules' keys in the table: (state key, ``spec.argv``)."""
        leases, found, late = self._leases, [], []
        bucket = int(now // BUCKET_MS)
        with self._lock:
            for lease_id, spec in zip(ids, specs, strict=True):
                lease = leases.get(lease_id)
                if lease is None or lease.units < spec.argv[4] or now >= lease.deadline:
                    return None
                found.append(lease)
            for spec, lease in zip(specs, found, strict=True):
                late += _admitted(lease, spec.argv[4], bucket)
        if late:
            buffer.count_at(late)
        return found

    def take_one(self, lease_id: tuple, spec, now: float) -> Lease | None:
        """``take_all`` of one rule (the common leased call), without lists."""
        with self._lock:
            lease = self._leases.get(lease_id)
            cost = spec.argv[4]
            if lease is None or lease.units < cost or now >= lease.deadline:
                return None
            late = _admitted(lease, cost, int(now // BUCKET_MS))
        if late:
            buffer.count_at(late)
        return lease

    def fold(self) -> list[tuple]:
        """The usage counts ``take_all`` holds, as (row, bucket, n) for the
        usage buffer (it asks before each write)."""
        with self._lock:
            late, self._unfolded = self._unfolded, []
            for lease in self._leases.values():
                late += _folded(lease)
        return late

    def untake(self, items, taken: dict[int, Lease]) -> None:
        """Put back what ``take`` took (the call was blocked or failed)."""
        with self._lock:
            for index, lease in taken.items():
                cost = items[index][0].argv[4]
                lease.units += cost
                lease.used -= cost

    def wants(self, items, keys, now: float) -> list[int]:
        """Units to ask for per rule: 0 when not leased, else k (see module)."""
        with self._lock:
            return [
                self._want(spec, keys[index], now) if spec.lease else 0
                for index, (spec, _) in enumerate(items)
            ]

    def _want(self, spec, key: str, now: float) -> int:
        cost = spec.argv[4]
        lease = self._leases.get((key, spec.argv))
        if lease is None:
            return cost
        max_ms, share, _ = conf.lease_settings()
        elapsed = max(now - lease.granted_at, 1.0)
        if elapsed > IDLE_LIVES * max_ms:  # an old burst must not size a lease
            lease.rate = 0.0
            return cost
        observed = lease.used / elapsed
        lease.rate = (lease.rate + observed) / 2 if lease.rate else observed
        most = math.floor(spec.capacity * share)
        target = max_ms * TARGET_SHARE
        k = min(math.ceil(lease.rate * target), most, 2 * max(lease.wanted, cost))
        return max(cost, k)

    def grant(self, limiter, items, keys, decisions, reply, wants, started: float):
        """Keep the units a "lease" reply granted beyond each rule's cost."""
        horizon_cap, _, cap = conf.lease_settings()
        with self._lock:
            for index, (spec, _) in enumerate(items):
                if not spec.lease or decisions[index].reason != "ok":
                    continue
                offset = 1 + index * LEASE_REPLY_FIELDS
                granted, mark, horizon = reply[offset + 4 : offset + 7]
                key = (keys[index], spec.argv)
                old = self._leases.pop(key, None)
                if old is not None:
                    self._unfolded += _folded(old)
                if old is not None and old.units:
                    self._returns.append((old, *key, old.units))
                life = horizon_cap if horizon < 0 else min(horizon_cap, horizon)
                self._leases[key] = Lease(
                    units=granted - spec.argv[4],
                    deadline=started + life,
                    mark=mark,
                    remaining=decisions[index].remaining,
                    reset_at=started + decisions[index].reset_after * 1000,
                    granted_at=started,
                    used=spec.argv[4],
                    rate=old.rate if old is not None else 0.0,
                    wanted=wants[index],
                    limiter=limiter,
                    client=limiter.client,
                    counts=_admission_rows(limiter, keys[index], items[index]),
                )
            while len(self._leases) > cap:
                key, lease = self._leases.popitem(last=False)
                self._unfolded += _folded(lease)
                if lease.units:
                    self._returns.append((lease, *key, lease.units))
        buffer.start()  # the thread that ends leases and gives units back

    # -- ending leases ---------------------------------------------------------

    def expire(self, now: float | None = None) -> None:
        """Queue the give-back of every ended lease's units; forget idle ones."""
        now = now_ms() if now is None else now
        with self._lock:
            for key, lease in list(self._leases.items()):
                if lease.deadline <= now and lease.units:
                    self._returns.append((lease, *key, lease.units))
                    lease.units = 0
                if not lease.units and now - lease.granted_at > IDLE_MS:
                    self._unfolded += _folded(lease)
                    del self._leases[key]

    def give_back(self) -> int:
        """Give the queued units back to Redis; return how many it took back.

        A failed give-back is dropped with a log line: its units are lost to
        their window or refill (under-admission, never over-admission).
        """
        with self._lock:
            returns, self._returns = self._returns, []
        back = 0
        for lease, key, argv, units in returns:
            algorithm, limit, period, capacity = argv[:4]
            script = script_for(frozenset((algorithm,)), "give_back")
            limiter = lease.limiter
            args = [
                limiter._now(),
                algorithm,
                limit,
                period,
                capacity,
                units,
                lease.mark,
                argv[7],  # the rule's field in the state hash
            ]
            try:
                back += run_script(lease.client, script, [key], args)
            except RedisError as exc:  # Redis is down: do not wait once per lease
                lost = sum(r[3] for r in returns)
                logger.warning(
                    "ratelimit: %d leased units not given back: %s", lost, exc
                )
                break
        return back

    def end_all(self) -> int:
        """End every lease now and give its units back (at exit, in tests)."""
        self.expire(now=math.inf)
        return self.give_back()

    def clear(self) -> None:
        """Forget every lease without giving anything back (a forked child)."""
        self._lock = threading.Lock()
        self._leases = OrderedDict()
        self._returns = []
        self._unfolded = []


class LeasedCall:
    """One call with leased rules: take from the leases, ask Redis for the rest.

    ``local()`` answers when every rule was taken from a lease; otherwise
    ``pending()`` names the rules Redis decides (in "lease" mode) and
    ``settle()`` merges its answer: when Redis blocks, the taken units go back
    and the taken rules read "not_consumed"; when it admits, the taken ones
    are counted and new grants become leases.
    """

    def __init__(self, table: LeaseTable, limiter, items, keys) -> None:
        self.table, self.limiter = table, limiter
        self.items, self.keys = items, keys
        self.started = now_ms()
        self.taken = table.take(items, keys, self.started)
        self.rest = [i for i in range(len(items)) if i not in self.taken]

    def local(self) -> list[Decision] | None:
        if self.rest:
            return None
        self._count_taken()
        return [self._from_lease(i) for i in range(len(self.items))]

    def pending(self) -> tuple[list, list[str], list[int]]:
        """The rules Redis decides: items, state keys and units wanted."""
        items = [self.items[i] for i in self.rest]
        keys = [self.keys[i] for i in self.rest]
        return items, keys, self.table.wants(items, keys, self.started)

    def abort(self) -> None:
        self.table.untake(self.items, self.taken)

    def settle(self, decisions, reply, wants) -> list[Decision]:
        items, keys = (
            [self.items[i] for i in self.rest],
            [self.keys[i] for i in self.rest],
        )
        if any(d.blocking for d in decisions):
            self.abort()
            merged = dict(zip(self.rest, decisions, strict=True))
            return [
                merged.get(i) or not_consumed(self.items[i][0])
                for i in range(len(self.items))
            ]
        if reply is not None:
            self.table.grant(
                self.limiter, items, keys, decisions, reply, wants, self.started
            )
            decisions = [
                _with_lease(d, reply, n, items[n][0]) for n, d in enumerate(decisions)
            ]
        self._count_taken()
        merged = dict(zip(self.rest, decisions, strict=True))
        return [
            merged[i] if i in merged else self._from_lease(i)
            for i in range(len(self.items))
        ]

    def _from_lease(self, index: int) -> Decision:
        return lease_decision(self.items[index][0], self.taken[index], self.started)

    def _count_taken(self) -> None:
        count_admissions(
            [(self.items[i][0], lease) for i, lease in self.taken.items()],
            self.started,
        )


def lease_ids(keys, specs) -> list[tuple]:
    """The rules' keys in the lease table: (state key, ``spec.argv``)."""
    return [(key, spec.argv) for key, spec in zip(keys, specs, strict=True)]


def admit_all(table: LeaseTable, ids, specs) -> list[Decision] | None:
    """A call whose rules are all leased, admitted from this process's leases
    alone (counted for the stats), or None with nothing taken; ``ids`` from
    ``lease_ids``."""
    now = now_ms()
    if len(ids) == 1:  # the common call: no lists
        lease = table.take_one(ids[0], specs[0], now)
        return None if lease is None else [lease_decision(specs[0], lease, now)]
    taken = table.take_all(ids, specs, now)
    if taken is None:
        return None
    return [
        lease_decision(spec, lease, now)
        for spec, lease in zip(specs, taken, strict=True)
    ]


def lease_decision(spec, lease: Lease, now: float) -> Decision:
    """The decision of a rule admitted from ``lease`` at ``now``."""
    reset_after = math.ceil(max(lease.reset_at - now, 0)) / 1000
    remaining = lease.remaining + lease.units
    return Decision(True, spec.capacity, remaining, reset_after, 0.0, spec.scope)


def count_admissions(pairs, now: float) -> None:
    """Count each (spec, lease) admission into the lease's usage rows."""
    counts = []
    for spec, lease in pairs:
        cost = spec.argv[4]
        for row in lease.counts:
            counts.append((row, cost if row.metric == "c" else 1))
    if counts:
        buffer.count_many(counts, now)


def _admitted(lease: Lease, cost: int, bucket: int) -> Sequence[tuple]:
    """Take ``cost`` units from ``lease`` and count the admission in its
    ``bucket`` (under the table's lock); the counts of an earlier bucket
    come back, as (row, bucket, n), for the usage buffer."""
    lease.units -= cost
    lease.used += cost
    late = ()
    if lease.bucket != bucket:
        late = _folded(lease)
        lease.bucket = bucket
    lease.pending += 1
    lease.pending_cost += cost
    return late


def _folded(lease: Lease) -> list[tuple]:
    """The lease's pending admissions as (row, bucket, n), now reset."""
    if not lease.pending:
        return []
    admitted, cost = lease.pending, lease.pending_cost
    lease.pending = lease.pending_cost = 0
    return [
        (row, lease.bucket, cost if row.metric == "c" else admitted)
        for row in lease.counts
    ]


def _admission_rows(limiter, key: str, item) -> tuple:
    """The usage rows a request admitted from this lease adds to (none when
    the limiter does not count usage)."""
    if not limiter.usage_ttl:
        return ()
    spec, identity = item
    label = limiter._label(identity)
    metrics = ("u",) if spec.argv[4] == 1 else ("a", "c")  # as the script counts
    return tuple(row_of(limiter, key, spec.scope, m, label) for m in metrics)


def _with_lease(decision: Decision, reply, index: int, spec) -> Decision:
    """Report a granted rule's remaining with the units the lease keeps."""
    granted = reply[1 + index * LEASE_REPLY_FIELDS + 4]
    if not spec.lease or decision.reason != "ok" or granted <= spec.argv[4]:
        return decision
    return replace(decision, remaining=decision.remaining + granted - spec.argv[4])


table = LeaseTable()
atexit.register(table.end_all)  # runs before local_usage's last flush
buffer.count_before_writing(table.fold)
buffer.every_flush(table.expire)
buffer.every_flush(table.give_back)
os.register_at_fork(after_in_child=table.clear)
