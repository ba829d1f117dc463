"""Usage counted in-process, for decisions made without Redis; written in batches.

The deny cache (local denials) and token leasing (local admissions) answer
some requests without calling the decision script, which would otherwise
have counted them. They add what the script would have written here:

* ``"a"`` (an admitted request) and ``"c"`` (its cost), or ``"u"`` (both, for
  a cost of 1): the per-minute count and the identity digest in the (minute,
  scope) distinct-clients HyperLogLog;
* ``"b"`` or ``"s"`` (a blocked or shadow-blocked request): the count, the
  HyperLogLog and the shard's offenders set.

A daemon thread writes the buffer to the shard's live usage hash at most
every ``FLUSH_INTERVAL`` (and at exit) and runs the other periodic tasks
registered with ``every_flush`` (lease give-backs). The minute comes from
Redis ``TIME`` read in the flush, minus each count's age (100 ms buckets). A
process killed without running ``atexit`` (SIGKILL, a crash) loses the counts
of at most its last ``FLUSH_INTERVAL``; a Redis error keeps the counts for the
next flush. ``aggregation.drain_usage`` flushes this process's buffer first.
A forked child starts with an empty buffer: the parent writes what it had.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from . import usage

logger = logging.getLogger("ratelimit_app")

# Seconds between two writes of the buffered usage counts.
FLUSH_INTERVAL = 1.0
# Buffered counts are kept per this many milliseconds (their minute is exact
# but for counts made this close to a minute's end).
BUCKET_MS = 100
# Rows (usage hash, scope, metric, identity, 100 ms bucket) the buffer holds at
# most: while Redis is unreachable for long, counts beyond it are dropped (and
# the drop logged) rather than grow the process without bound.
MAX_ROWS = 100_000
# Metrics that add to the offenders set (a denial), beside the count and HLL.
DENIALS = frozenset({"b", "s"})


def now_ms() -> float:
    return time.monotonic() * 1000


def digest_of(key: str) -> str:
    """The identity digest of a state key, ``<prefix>{s<N>}:<digest>:...``."""
    return key[key.index("}") + 2 :].split(":", 1)[0]


class Row:
    """Where one count goes (client, live hash, TTL) and what it counts
    (offenders kept, scope, metric, identity digest, label).

    Hashed by identity, not content: the hot path (a lease admitting) keeps
    its rows and counts into them without hashing ten fields each time.
    ``row_of`` hands out one Row per content while it can; two Rows of the
    same content still add up when written (``_write`` sums by content).
    """

    __slots__ = ("what", "where")

    def __init__(self, where: tuple, what: tuple) -> None:
        self.where, self.what = where, what

    @property
    def metric(self) -> str:
        return self.what[2]


_rows: dict[tuple, Row] = {}


def row_of(limiter, key: str, scope: str, metric: str, label: str) -> Row:
    """The Row of one count (see ``UsageBuffer.count_many``)."""
    where = (limiter.client, usage.live_key_of(key), limiter.usage_ttl)
    what = (limiter.offenders_kept, scope, metric, digest_of(key), label)
    found = _rows.get((where, what))
    if found is None:
        if len(_rows) >= MAX_ROWS:
            _rows.clear()
        found = _rows[(where, what)] = Row(where, what)
    return found


class UsageBuffer:
    """Counts by (Row, 100 ms bucket); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._dropped = 0
        self._tasks: list[Callable[[], object]] = []
        self._sources: list[Callable[[], list]] = []
        self._flusher_pid: int | None = None

    def add(self, limiter, key: str, scope: str, metric: str, n: int, label: str):
        """Count ``n`` of ``metric`` for the rule whose state key is ``key``,
        in the live usage hash of that key's shard."""
        self.count_many([(row_of(limiter, key, scope, metric, label), n)])

    def count_many(self, counts, now: float | None = None) -> None:
        """Add each (``row_of(...)``, n) of ``counts``, under one lock, in the
        bucket of ``now`` (monotonic ms; default: now)."""
        bucket = int((now_ms() if now is None else now) // BUCKET_MS)
        self.count_at([(row, bucket, n) for row, n in counts])

    def count_at(self, counts) -> None:
        """Add each (row, 100 ms bucket, n) of ``counts``, under one lock."""
        with self._lock:
            if len(self._counts) >= MAX_ROWS:
                self._dropped += sum(n for _, _, n in counts)
                return
            for row, bucket, n in counts:
                self._counts[(row, bucket)] += n
        self.start()

    def count_before_writing(self, source: Callable[[], list]) -> None:
        """Ask ``source`` for the counts it holds, as (row, bucket, n), before
        each write (a lease counts its admissions itself)."""
        if source not in self._sources:
            self._sources.append(source)

    def every_flush(self, task: Callable[[], object]) -> None:
        """Run ``task`` in the flusher thread after each write (and at exit)."""
        if task not in self._tasks:
            self._tasks.append(task)

    def start(self) -> None:
        """Start this process's flusher thread, once per process (a forked
        child's ``after_fork_in_child`` forgets the parent's)."""
        if self._flusher_pid is not None:  # no syscall: this runs per count
            return
        with self._lock:
            if self._flusher_pid is not None:
                return
            self._flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.run()

    def run(self) -> None:
        """One round: the periodic tasks (which may count), then the write."""
        for task in self._tasks:
            try:
                task()
            except Exception:  # a task's failure must not stop the thread
                logger.exception("ratelimit: background task %r failed", task)
        self.flush()

    def flush(self) -> int:
        """Write the buffered counts to Redis; return how many were written."""
        for source in self._sources:
            counts = source()
            if counts:
                self.count_at(counts)
        with self._lock:
            counts, self._counts = self._counts, Counter()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            logger.error(
                "ratelimit: %d local usage counts dropped: %d rows were waiting "
                "for Redis already (it has been unreachable for long)",
                dropped,
                MAX_ROWS,
            )
        by_client: dict = {}
        for (row, bucket), n in counts.items():
            by_client.setdefault(row.where[0], []).append((row, bucket, n))
        written = 0
        for client, rows in by_client.items():
            try:
                _write(client, rows)
                written += sum(n for row, _, n in rows if row.metric != "c")
            except RedisError as exc:
                logger.warning("ratelimit: local usage counts kept: %s", exc)
                with self._lock:
                    for row, bucket, n in rows:
                        self._counts[(row, bucket)] += n
        return written

    def clear(self) -> None:
        """Drop every buffered count (nothing is written)."""
        with self._lock:
            self._counts = Counter()
            self._dropped = 0

    def after_fork_in_child(self) -> None:
        """The parent writes what was buffered before the fork, not the child."""
        self._lock = threading.Lock()
        self._counts = Counter()
        self._dropped = 0
        self._flusher_pid = None


def _write(client, rows) -> None:
    """One pipeline of what the script writes per counted decision, the minute
    from Redis TIME minus each count's age; a minute's buckets are summed first
    (one write per minute, not per 100 ms)."""
    seconds, micros = client.time()
    redis_now, local_now = seconds * 1000 + micros // 1000, now_ms()
    by_minute: Counter = Counter()
    for row, bucket, n in rows:
        age = local_now - (bucket + 0.5) * BUCKET_MS
        by_minute[(row.where, row.what, int((redis_now - max(age, 0)) // 60000))] += n
    pipe = client.pipeline(transaction=False)
    for (
        (_, live, ttl),
        (kept, scope, metric, digest, label),
        minute,
    ), n in by_minute.items():
        pipe.hincrby(live, usage.encode_field(minute, scope, metric), n)
        pipe.pexpire(live, ttl)
        if metric == "c":
            continue
        hll = f"{live}:hll:{minute}|{scope}"
        pipe.pfadd(hll, digest)
        pipe.pexpire(hll, ttl)
        if metric in DENIALS:
            top = f"{live}:top"
            pipe.zincrby(top, n, f"{minute}|{digest}|{label}|{scope}")
            pipe.pexpire(top, ttl)
            pipe.zremrangebyrank(top, 0, -kept - 1)  # keep the highest ``kept``
    pipe.execute()


buffer = UsageBuffer()
atexit.register(buffer.run)
os.register_at_fork(after_in_child=buffer.after_fork_in_child)
