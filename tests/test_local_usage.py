"""Usage counted in-process: the right minute across a boundary, written once per fork."""

from __future__ import annotations

import os
import time

import pytest

from ratelimit_app import limiter, local_usage, usage
from ratelimit_app.types import Rule

SCOPE, IDENTITY, RATE = "storm", "client", "1/h"
MINUTE_MS = 60_000


# The local deny cache on, its epoch key read (conftest).
pytestmark = pytest.mark.usefixtures("deny_cache_on")


def hit(identity: str = IDENTITY):
    return limiter.default_limiter().hit(SCOPE, identity, RATE)


def live_key(identity: str) -> str:
    engine = limiter.default_limiter()
    return usage.live_key_of(engine.keys_for([Rule(SCOPE, identity, RATE)])[0])


def blocked_by_minute(identity: str = IDENTITY) -> dict[int, int]:
    """The blocked counts of ``SCOPE`` in the identity's live usage hash, by
    minute (the hash is its shard's: compare before and after)."""
    client = limiter.default_limiter().client
    counts = {}
    for field, value in client.hgetall(live_key(identity)).items():
        minute, scope, metric = field.decode().split("|")
        if scope == SCOPE and metric == "b":
            counts[int(minute)] = counts.get(int(minute), 0) + int(value)
    return counts


def denied_by_redis_then_cached(identity: str = IDENTITY) -> None:
    """The first hit passes, the second is Redis's denial (kept until the
    1/h deadline), so the later denials are all the deny cache's."""
    assert [hit(identity).allowed for _ in range(2)] == [True, False]
    local_usage.buffer.flush()


def redis_ms() -> int:
    seconds, micros = limiter.default_limiter().client.time()
    return seconds * 1000 + micros // 1000


def sleep_until_before_a_minute(lead_ms: int) -> int:
    """Sleep until ``lead_ms`` before a Redis TIME minute ends; return its end."""
    now = redis_ms()
    boundary = (now // MINUTE_MS + 1) * MINUTE_MS
    if boundary - now < lead_ms + 300:  # too close to set up: the next one
        boundary += MINUTE_MS
    time.sleep((boundary - lead_ms - now) / 1000)
    return boundary


def storm(until_ms: int) -> list[int]:
    """Denied hits until Redis TIME ``until_ms``; each one's Redis TIME before it."""
    sent = []
    while (now := redis_ms()) < until_ms:
        sent.append(now)
        decision = hit()
        assert not decision.allowed and decision.reason == "limit"
    return sent


# Waits up to a minute for a boundary; the 100 ms tolerance needs a calm machine.
@pytest.mark.slow
@pytest.mark.alone
def test_local_denials_across_a_minute_boundary_land_in_their_minutes(calls):
    denied_by_redis_then_cached()
    scripts, before = len(calls), blocked_by_minute()
    boundary = sleep_until_before_a_minute(1500)
    sent = storm(boundary + 1500)
    local_usage.buffer.flush()  # what the flusher thread has not written yet
    assert len(calls) == scripts  # every denial of the storm was local
    minute = boundary // MINUTE_MS - 1  # M, ending at the boundary
    after = blocked_by_minute()
    added = {m: n - before.get(m, 0) for m, n in after.items() if n != before.get(m)}
    assert set(added) <= {minute, minute + 1}
    assert sum(added.values()) == len(sent)
    # Counts are kept per 100 ms: only those that close may change minutes.
    near = sum(1 for t in sent if abs(t - boundary) < local_usage.BUCKET_MS)
    early = sum(1 for t in sent if t <= boundary - local_usage.BUCKET_MS)
    late = len(sent) - early - near
    assert early <= added.get(minute, 0) <= early + near
    assert late <= added.get(minute + 1, 0) <= late + near
    assert min(early, late) > 0.1 * len(sent)  # it did straddle the boundary


def fork_and_flush(identity: str) -> tuple[str, int, int]:
    """30 local denials, then a fork: (what the child's flush wrote, what the
    parent's flush wrote, the denials added to Redis)."""
    denied_by_redis_then_cached(identity)
    before = sum(blocked_by_minute(identity).values())
    for _ in range(30):
        assert hit(identity).reason == "limit"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: flush, report what it wrote, leave at once
        try:
            os.write(write, str(local_usage.buffer.flush()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_wrote = pipe.read()
    os.waitpid(pid, 0)
    parent_wrote = local_usage.buffer.flush()
    return child_wrote, parent_wrote, sum(blocked_by_minute(identity).values()) - before


def test_a_forked_child_does_not_write_its_parents_counts():
    # The parent's flusher thread wakes every second: when it wrote some counts
    # around the fork, the parent's own flush could not show that all 30 were
    # still buffered across it. Another client then, at most twice more.
    for attempt in range(3):
        child_wrote, parent_wrote, added = fork_and_flush(f"client-{attempt}")
        assert child_wrote == "0"
        assert added == 30  # written once, by the parent
        if parent_wrote == 30:  # all buffered across the fork, all the parent's
            return
    pytest.fail(f"the flusher thread wrote around every fork ({parent_wrote} of 30)")
