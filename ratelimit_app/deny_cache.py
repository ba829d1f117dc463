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

Invalidation: a reset (``Limiter.reset``, the admin, ``ratelimit_reset``,
``testing.reset_counters``/``reset_all``) writes a fresh random token to the
epoch key ``<prefix>{policies}:epoch`` and clears this process's cache; a
policy edit (exemptions included) publishes a new snapshot. Every process
reads the epoch key with the snapshot's version (one MGET per
``POLICY_REFRESH_INTERVAL``) and drops everything when either changed. A
local answer needs an epoch read younger than the interval: a process that
does not refresh policies (``limiter.hit`` alone) reads the key itself, once
per interval, and only when it is about to answer locally.

Locally denied requests are still counted: the blocked (or shadow) count, the distinct
clients HyperLogLog and the offenders set, exactly as the script would,
buffered here and written to the shard's live usage hash by a daemon thread
at most every ``FLUSH_INTERVAL`` (and at exit). The minute comes from Redis
``TIME`` read in the flush, minus each count's age (100 ms buckets). A
process killed without running ``atexit`` (SIGKILL, a crash) loses the counts
of at most its last ``FLUSH_INTERVAL``; a Redis error keeps the counts for the
next flush. ``aggregation.drain_usage`` flushes this process's buffer first.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from redis.exceptions import RedisError

from . import conf, usage
from .types import Decision

logger = logging.getLogger("ratelimit_app")

# Seconds between two writes of the buffered usage counts.
FLUSH_INTERVAL = 1.0
# Buffered counts are kept per this many milliseconds (their minute is exact
# but for counts made this close to a minute's end).
BUCKET_MS = 100


# Seconds the epoch key lives after a reset (every key has a TTL); its expiry
# only makes every process drop its denials once more.
EPOCH_TTL = 7 * 24 * 3600


def epoch_key(prefix: str) -> str:
    """Rewritten on every reset; beside the snapshot keys (same hash tag)."""
    return f"{prefix}{{policies}}:epoch"


def now_ms() -> float:
    return time.monotonic() * 1000


@dataclass(frozen=True, slots=True)
class Denial:
    deadline: float  # monotonic ms when Redis would admit this cost again
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
        self._counts: Counter = Counter()
        self._flusher_pid: int | None = None

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
            _denied(spec, found[i], now) if i in found else _not_consumed(spec)
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
                key = (keys[index], items[index][0].argv)
                self._entries[key] = Denial(
                    started + d.retry_after * 1000,
                    started + d.reset_after * 1000,
                    d.remaining,
                )
                self._entries.move_to_end(key)
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

    def count(self, limiter, items, keys, decisions, now: float) -> None:
        """Buffer what the script would have counted for a locally denied call."""
        if not limiter.usage_ttl:
            return
        live = usage.live_key_of(keys[0])  # the call's first rule's shard counts
        bucket = int(now // BUCKET_MS)
        with self._lock:
            for index, decision in enumerate(decisions):
                if decision.reason != "limit":
                    continue
                metric = "s" if decision.shadow else "b"
                spec, identity = items[index]
                digest = _digest_of(keys[index])
                label = limiter._label(identity)
                where = (limiter.client, live, limiter.usage_ttl)
                what = (limiter.offenders_kept, spec.scope, metric, digest, label)
                self._counts[(where, what, bucket)] += 1
        self._start_flusher()

    def _start_flusher(self) -> None:
        pid = os.getpid()
        if self._flusher_pid == pid:
            return
        with self._lock:
            if self._flusher_pid == pid:
                return
            self._flusher_pid = pid
        threading.Thread(target=self._flush_forever, daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> int:
        """Write the buffered counts to Redis; return how many denials went."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        by_client: dict = {}
        for (where, what, bucket), n in counts.items():
            by_client.setdefault(where[0], []).append((where, what, bucket, n))
        written = 0
        for client, rows in by_client.items():
            try:
                _write(client, rows)
                written += sum(row[3] for row in rows)
            except RedisError as exc:
                logger.warning("ratelimit: deny cache usage counts kept: %s", exc)
                with self._lock:
                    for where, what, bucket, n in rows:
                        self._counts[(where, what, bucket)] += n
        return written


def _write(client, rows) -> None:
    """One pipeline of the script's writes for a denial (HINCRBY "b", PFADD,
    ZINCRBY), the minute from Redis TIME minus each count's age."""
    seconds, micros = client.time()
    redis_now, local_now = seconds * 1000 + micros // 1000, now_ms()
    pipe = client.pipeline(transaction=False)
    for (_, live, ttl), (kept, scope, metric, digest, label), bucket, n in rows:
        age = local_now - (bucket + 0.5) * BUCKET_MS
        minute = int((redis_now - max(age, 0)) // 60000)
        pipe.hincrby(live, usage.encode_field(minute, scope, metric), n)
        pipe.pexpire(live, ttl)
        hll = f"{live}:hll:{minute}|{scope}"
        pipe.pfadd(hll, digest)
        pipe.pexpire(hll, ttl)
        top = f"{live}:top"
        pipe.zincrby(top, n, f"{minute}|{digest}|{label}|{scope}")
        pipe.pexpire(top, ttl)
        pipe.zremrangebyrank(top, 0, -kept - 1)  # keep the highest ``kept``
    pipe.execute()


def _digest_of(key: str) -> str:
    """The identity digest of ``<prefix>{s<N>}:<digest>:<scope>:<alg>``."""
    return key[key.index("}") + 2 :].split(":", 1)[0]


def _denied(spec, entry: Denial, now: float) -> Decision:
    return Decision(
        False,
        spec.capacity,
        entry.remaining,
        math.ceil(max(entry.reset_at - now, 0)) / 1000,
        math.ceil(entry.deadline - now) / 1000,
        spec.scope,
        "limit",
        spec.shadow,
    )


def _not_consumed(spec) -> Decision:
    return Decision(
        True, spec.capacity, 0, 0.0, 0.0, spec.scope, "not_consumed", spec.shadow
    )


cache = DenyCache()
atexit.register(cache.flush)
