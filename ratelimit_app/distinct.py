"""Distinct clients: the shards' minute HyperLogLogs merged at drain time.

The decision script adds identity digests to one HyperLogLog per shard, scope
(or usage group: several scopes, each merging it) and minute (see usage.py).
Counts of distinct clients do not add up across shards, minutes or hours, so
the drain merges instead of adding: it copies
each shard's HyperLogLog into one slot (Redis Cluster cannot merge across
slots), PFMERGEs it into the scope's merged minute, hour and day
HyperLogLogs, and stores their PFCOUNT. A union is idempotent, so a drain
repeated after a crash merges the same data again without counting anyone
twice, and the database keeps the largest count seen for a period.

A merged HyperLogLog lives for ``MERGED_TTL`` of its period: a shard batch
that reaches the database later than that (a long database outage) is
merged into a fresh one, and its period keeps the larger of the two counts.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from redis.exceptions import ResponseError

from . import usage
from .backends.topology import evalsha_each
from .models import UsageDay, UsageHour, UsageMinute

logger = logging.getLogger("ratelimit_app")

PERIOD_MINUTES = {"minute": 1, "hour": 60, "day": 1440}
MODELS = {"minute": UsageMinute, "hour": UsageHour, "day": UsageDay}
MERGED_TTL = {
    "minute": timedelta(hours=6),
    "hour": timedelta(days=2),
    "day": timedelta(days=3),
}
# Shard HyperLogLogs read per pipeline (each at most 12 kB).
KEYS_PER_READ = 500

# KEYS: merged minute, hour and day HyperLogLogs, a scratch key (one slot)
# ARGV: the three TTLs in ms, then the shards' HyperLogLogs as raw strings
# Returns: PFCOUNT of the three, then how many shard values were not
# HyperLogLogs (skipped). A merged key holding garbage is replaced.
MERGE_LUA = """
local function failed(reply)
  return type(reply) == 'table' and reply['err'] ~= nil
end
for i = 1, 3 do
  if failed(redis.pcall('PFCOUNT', KEYS[i])) then redis.call('DEL', KEYS[i]) end
end
local skipped = 0
for i = 4, #ARGV do
  redis.call('SET', KEYS[4], ARGV[i])
  if failed(redis.pcall('PFMERGE', KEYS[1], KEYS[4])) then
    skipped = skipped + 1
  end
end
redis.call('DEL', KEYS[4])
redis.call('PFMERGE', KEYS[1])
redis.call('PFMERGE', KEYS[2], KEYS[1])
redis.call('PFMERGE', KEYS[3], KEYS[1])
local counts = {}
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[i])
  counts[i] = redis.call('PFCOUNT', KEYS[i])
end
counts[4] = skipped
return counts
"""

# (scope or usage group, minute, whether a group) -> the shards whose
# HyperLogLog holds clients of it
Seen = dict[tuple[str, int, bool], set[int]]


@dataclass(frozen=True, slots=True)
class DistinctCount:
    period: str  # "minute", "hour" or "day"
    scope: str
    start: int  # the period's first minute (unix minutes)
    clients: int


def note(seen: Seen, shard: int, field: usage.UsageField) -> None:
    """Remember that a batch of ``shard`` counted clients for ``field``'s
    scope (or usage group) and minute."""
    seen.setdefault((field.scope, field.minute, field.group), set()).add(shard)


def _log_key(prefix: str, shard: int, seen_key: tuple) -> str:
    scope, minute, group = seen_key
    return usage.hll_key(prefix, shard, minute, scope, group=group)


def merged_key(prefix: str, period: str, start: int, scope: str) -> str:
    """One slot for every merged HyperLogLog, e.g. ``rl:1:{usage-distinct}:h:...``."""
    return f"{prefix}{{usage-distinct}}:{period[0]}:{start}|{scope}"


def period_start(period: str, minute: int) -> int:
    return minute - minute % PERIOD_MINUTES[period]


def merge(client, prefix: str, seen: Seen) -> tuple[list[DistinctCount], int]:
    """Merge the shards' HyperLogLogs of ``seen``; the counts per period, and
    how many values were skipped as not HyperLogLogs."""
    if not seen:
        return [], 0
    blobs = _read_shard_logs(client, prefix, seen)
    groups = sorted(blobs)  # a group without any HyperLogLog has nothing to add
    if not groups:
        return [], 0
    ttls = [int(MERGED_TTL[p].total_seconds() * 1000) for p in PERIOD_MINUTES]
    calls = []
    for scope, minute in groups:
        keys = [
            merged_key(prefix, period, period_start(period, minute), scope)
            for period in PERIOD_MINUTES
        ]
        keys.append(f"{prefix}{{usage-distinct}}:scratch")
        calls.append((keys, [*ttls, *blobs[(scope, minute)]]))
    counts, skipped = {}, 0
    for (scope, minute), reply in zip(
        groups, evalsha_each(client, MERGE_LUA, calls), strict=True
    ):
        if isinstance(reply, Exception):
            raise reply
        for period, clients in zip(PERIOD_MINUTES, reply[:3], strict=True):
            key = (period, scope, period_start(period, minute))
            counts[key] = max(counts.get(key, 0), clients)  # later merges hold more
        skipped += reply[3]
    if skipped:
        logger.warning(
            "usage drain: %d distinct-client value(s) were not HLLs", skipped
        )
    return [DistinctCount(*key, clients) for key, clients in counts.items()], skipped


def _read_shard_logs(client, prefix: str, seen: Seen) -> dict[tuple, list[bytes]]:
    """The raw value of every shard HyperLogLog named in ``seen`` (if any),
    by (scope, minute): a usage group's goes to each of its scopes."""
    names = [
        (seen_key, _log_key(prefix, shard, seen_key))
        for seen_key in sorted(seen)
        for shard in sorted(seen[seen_key])
    ]
    blobs: dict[tuple, list[bytes]] = defaultdict(list)
    for start in range(0, len(names), KEYS_PER_READ):
        chunk = names[start : start + KEYS_PER_READ]
        pipe = client.pipeline(transaction=False)
        for _, key in chunk:
            pipe.get(key)
        for ((scope, minute, group), key), value in zip(
            chunk, pipe.execute(raise_on_error=False), strict=True
        ):
            if isinstance(value, ResponseError):
                logger.warning("usage drain: %s is not a string: skipped", key)
            elif isinstance(value, Exception):
                raise value
            elif value is not None:
                for member in usage.scopes_of(scope, group=group):
                    blobs[(member, minute)].append(value)
    return blobs


def store(counts: Iterable[DistinctCount]) -> None:
    """Raise each period's stored count to the merged one (never lower it).

    Runs inside the drain's transaction; creates the rows missing so far.
    """
    by_period = defaultdict(list)
    for count in counts:
        by_period[count.period].append(count)
    for period, rows in by_period.items():
        model = MODELS[period]
        model.objects.bulk_create(
            [
                model(policy=c.scope, **{period: usage.minute_start(c.start)})
                for c in rows
            ],
            ignore_conflicts=True,
        )
        for c in sorted(rows, key=lambda c: (c.scope, c.start)):
            model.objects.filter(
                policy=c.scope,
                distinct_clients__lt=c.clients,
                **{period: usage.minute_start(c.start)},
            ).update(distinct_clients=c.clients)


def forget(client, prefix: str, seen: Seen, current_minute: int) -> None:
    """Delete shard HyperLogLogs of minutes that ended before the drain read
    them (one minute of margin for clocks of cluster nodes): nothing can
    add to them, and their clients are merged. Others expire by TTL."""
    pipe = client.pipeline(transaction=False)
    for seen_key, shards in seen.items():
        if seen_key[1] < current_minute - 1:
            for shard in shards:
                pipe.delete(_log_key(prefix, shard, seen_key))
    pipe.execute()
