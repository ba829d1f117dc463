"""Usage counters from Redis into the database exactly once; roll-ups; retention.

Drain:

1. Finish the batches an earlier drain left behind (their ids sit in each
   shard's batches set): a batch whose ``DrainBatch`` row exists was recorded,
   so its key is just deleted; the others are recorded now.
2. Start new batches: a script per shard ``RENAMENX``-es the live hash to a
   fresh batch key in the same slot and adds the batch id to the shard's set,
   atomically. New counts go to a new live hash from then on.
3. Record: one transaction inserts a ``DrainBatch`` row per batch (unique id)
   and adds the counts to the minute rows; a concurrent or repeated drain of
   the same batch fails on the unique id and rolls back instead of counting
   it twice.
4. After the commit, delete the batch keys and their ids.

A crash anywhere leaves either an unrecorded batch (recorded by the next drain)
or a recorded one whose key remains (deleted by the next drain). New batches
start only after the left-over ones are recorded, so a failing database leaves
at most one batch per shard behind.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Trunc
from django.utils import timezone
from django.utils.module_loading import import_string
from redis.exceptions import NoScriptError, ResponseError

from . import conf, distinct, local_usage, offenders, usage
from .backends.redis import get_client
from .backends.topology import evalsha_each
from .models import DrainBatch, UsageDay, UsageHour, UsageMinute, UsageOffender

logger = logging.getLogger("ratelimit_app")

# Batch keys read per pipeline: bounds the memory held by raw fields.
BATCHES_PER_READ = 64
# Rows per statement when writing minute rows and batch ids.
ROWS_PER_QUERY = 500
# Tries when concurrent drains keep recording some of the same batches first.
RECORD_ATTEMPTS = 5
# (policy, period) pairs recomputed per roll-up transaction.
ROLLUP_PAIRS_PER_TRANSACTION = 200
# How long a DrainBatch row outlives its batch key. The row stops a second
# drain that read the key before it was deleted from recording it again; such
# a drain is long finished a day later. Rows whose key a crash left behind
# are kept for the counter TTL plus this, when that key has surely expired.
DRAIN_BATCH_GRACE = timedelta(days=1)

# Test-only: a callable(batch_ids) run inside the drain's transaction, after
# the counts are written and before the commit, so a test can stop a drain
# exactly there (kill the process, fail the database). When it is None, the
# environment variable names one by dotted path (read only when set).
drain_hook: Callable[[list[str]], None] | None = None
DRAIN_HOOK_ENV = "RATELIMIT_DRAIN_HOOK"

# KEYS[1] live hash, KEYS[2] batch key (new), KEYS[3] the shard's batches
# set, KEYS[4] live offenders set, KEYS[5] batch offenders key (new)
# ARGV[1] batch id, ARGV[2] TTL in milliseconds for the batch and the set
# Returns 1 when the live keys became the batch, 0 when there were none.
START_BATCH_LUA = """
local started = 0
for _, pair in ipairs({{1, 2}, {4, 5}}) do
  local live, batch = KEYS[pair[1]], KEYS[pair[2]]
  if redis.call('EXISTS', live) == 1 then
    if redis.call('RENAMENX', live, batch) == 0 then
      return redis.error_reply('ERR usage batch key already exists')
    end
    redis.call('PEXPIRE', batch, ARGV[2])
    started = 1
  end
end
if started == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return started
"""

_INDEX = {name: i for i, name in enumerate(usage.COUNTS)}
Counts = dict[tuple[str, int], list[int]]  # (policy, minute) -> in COUNTS order


@dataclass(frozen=True, slots=True)
class Batch:
    shard: int
    batch_id: str


@dataclass
class BatchContents:
    """What a set of batches holds, summed, ready for the database."""

    counts: Counts = field(
        default_factory=lambda: defaultdict(lambda: [0] * len(usage.COUNTS))
    )
    offences: offenders.Offences = field(default_factory=dict)
    seen: distinct.Seen = field(default_factory=dict)
    skipped: int = 0  # unreadable fields and members
    expired: list[Batch] = field(default_factory=list)  # keys gone before reading


@dataclass
class DrainReport:
    recorded: int = 0  # batches whose counts this drain added
    cleaned: int = 0  # batches found already recorded: keys just deleted
    skipped: int = 0  # unreadable fields left out


# -- drain ---------------------------------------------------------------------


def drain_usage(client=None) -> DrainReport:
    """Move every shard's counters into the minute rows, exactly once."""
    local_usage.buffer.flush()  # this process's local decisions first
    client = client if client is not None else get_client()
    prefix = conf.key_prefix()
    shards = range(conf.shard_count())
    report = DrainReport()
    _finish(client, prefix, _leftover_batches(client, prefix, shards), report)
    _finish(client, prefix, _start_batches(client, prefix, shards), report)
    if report.recorded or report.cleaned or report.skipped:
        logger.info("usage drain: %s", report)
    return report


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _leftover_batches(client, prefix: str, shards: Sequence[int]) -> list[Batch]:
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.smembers(usage.batches_key(prefix, shard))
    return [
        Batch(shard, batch_id.decode())
        for shard, ids in zip(shards, pipe.execute(), strict=True)
        for batch_id in ids
    ]


def _start_batches(client, prefix: str, shards: Sequence[int]) -> list[Batch]:
    """Rename each shard's live hash to a new batch; returns those renamed.

    A script flush (or a Redis restart) under the pipeline fails the calls
    after it with NOSCRIPT: those shards are tried again.
    """
    started, todo = [], list(shards)
    for retries_left in (2, 1, 0):
        batches = [Batch(shard, uuid.uuid4().hex) for shard in todo]
        replies, todo = _rename_live(client, prefix, batches), []
        for batch, reply in zip(batches, replies, strict=True):
            if isinstance(reply, NoScriptError) and retries_left:
                todo.append(batch.shard)
            elif isinstance(reply, Exception):
                raise reply
            elif reply:
                started.append(batch)
        if not todo:
            break
    return started


def _rename_live(client, prefix: str, batches: list[Batch]) -> list:
    """START_BATCH_LUA for each batch (pipelined but on a cluster): the
    replies or errors."""
    ttl_ms = usage.ttl_seconds() * 1000
    calls = []
    for batch in batches:
        keys = [
            usage.live_key(prefix, batch.shard),
            usage.batch_key(prefix, batch.shard, batch.batch_id),
            usage.batches_key(prefix, batch.shard),
            usage.top_key(prefix, batch.shard),
            usage.batch_top_key(prefix, batch.shard, batch.batch_id),
        ]
        calls.append((keys, [batch.batch_id, ttl_ms]))
    return evalsha_each(client, START_BATCH_LUA, calls)


def _finish(client, prefix: str, batches: list[Batch], report: DrainReport) -> None:
    """Record the batches not recorded yet, in one transaction; then delete
    the keys of all of them."""
    if not batches:
        return
    current_minute = _redis_minute(client)  # before reading the HyperLogLogs
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        recorded = _recorded_ids(batches)
        pending = [b for b in batches if b.batch_id not in recorded]
        contents = _read_batches(client, prefix, pending)
        # Merging is idempotent, so it comes before the record, never lost.
        clients, skipped = distinct.merge(client, prefix, contents.seen)
        try:
            if pending:
                _record(pending, contents, clients)
            break
        except IntegrityError:
            # A concurrent drain recorded some of them first: read the rest again.
            if attempt == RECORD_ATTEMPTS or not _recorded_ids(pending):
                raise
    report.recorded += len(pending)
    report.cleaned += len(batches) - len(pending)
    report.skipped += contents.skipped + skipped
    _forget(client, prefix, batches)
    distinct.forget(client, prefix, contents.seen, current_minute)
    if contents.expired:
        logger.error(
            "usage batch(es) %s expired before they were recorded: their counts "
            "are lost (raise RATELIMIT['USAGE_TTL'] or keep the drain running)",
            ", ".join(str(b) for b in contents.expired),
        )


def _redis_minute(client) -> int:
    seconds, _ = client.time()
    return seconds // 60


def _recorded_ids(batches: list[Batch]) -> set[str]:
    recorded = set()
    for chunk in _chunks([b.batch_id for b in batches], ROWS_PER_QUERY):
        rows = DrainBatch.objects.filter(batch_id__in=chunk)
        recorded.update(rows.values_list("batch_id", flat=True))
    return recorded


def _read_batches(client, prefix: str, batches: list[Batch]) -> BatchContents:
    """The batches' counter hashes and offender sets, summed."""
    contents = BatchContents()
    for chunk in _chunks(batches, BATCHES_PER_READ):
        pipe = client.pipeline(transaction=False)
        for batch in chunk:
            pipe.hgetall(usage.batch_key(prefix, batch.shard, batch.batch_id))
            top = usage.batch_top_key(prefix, batch.shard, batch.batch_id)
            pipe.zrange(top, 0, -1, withscores=True, score_cast_func=bytes)
        replies = pipe.execute(raise_on_error=False)
        for index, batch in enumerate(chunk):
            fields, members = replies[2 * index], replies[2 * index + 1]
            _add_batch(contents, batch, fields, members)
    return contents


def _add_batch(contents: BatchContents, batch: Batch, fields, members) -> None:
    for reply, kind in ((fields, "hash"), (members, "sorted set")):
        if isinstance(reply, ResponseError):
            logger.error("usage batch %s: not a %s (%s): dropped", batch, kind, reply)
            contents.skipped += 1
        elif isinstance(reply, Exception):
            raise reply
    if not fields and not members:
        contents.expired.append(batch)
    if fields and not isinstance(fields, Exception):
        contents.skipped += add_fields(contents, batch, fields)
    if members and not isinstance(members, Exception):
        contents.skipped += offenders.add_members(contents.offences, batch, members)


def add_fields(contents: BatchContents, batch: Batch, fields: dict) -> int:
    """Add a batch's fields to ``contents``; returns how many were unreadable
    (skipped and logged)."""
    readable = usage.readable_pairs(
        fields.items(), usage.parse_field, usage.parse_count, batch, "field", logger
    )
    for parsed, amount in readable:
        for scope in parsed.scopes:  # each scope of a usage group
            for name in parsed.counts:
                contents.counts[(scope, parsed.minute)][_INDEX[name]] += amount
        distinct.note(contents.seen, batch.shard, parsed)
    return len(fields) - len(readable)


def _record(
    batches: list[Batch],
    contents: BatchContents,
    clients: list[distinct.DistinctCount],
) -> None:
    """Batch ids, counts, distinct clients and offenders in one transaction;
    IntegrityError when another drain recorded one of the batches first."""
    ids = sorted(b.batch_id for b in batches)  # one lock order for every drain
    with transaction.atomic():
        DrainBatch.objects.bulk_create(
            [DrainBatch(batch_id=batch_id) for batch_id in ids],
            batch_size=ROWS_PER_QUERY,
        )
        _add_counts(contents.counts)
        distinct.store(clients)
        offenders.record(contents.offences)
        _run_drain_hook(ids)


def _add_counts(counts: Counts) -> None:
    """Add to the minute rows: a statement per 500 rows, not one per row.

    Create the missing rows, lock them all, then write the sums back with an
    upsert on (policy, minute). The lock makes a concurrent drain wait for the
    commit and then read the new values.
    """
    keys = sorted(counts)  # one lock order for every drain
    missing = [UsageMinute(policy=p, minute=usage.minute_start(m)) for p, m in keys]
    UsageMinute.objects.bulk_create(
        missing, ignore_conflicts=True, batch_size=ROWS_PER_QUERY
    )
    rows = []
    for row in _locked_rows(counts):
        key = (row.policy, usage.minute_of(row.minute))
        values = {
            name: getattr(row, name) + amount
            for name, amount in zip(usage.COUNTS, counts[key], strict=True)
        }
        rows.append(UsageMinute(policy=row.policy, minute=row.minute, **values))
    _write_rows(UsageMinute, rows)


def _write_rows(model, rows: list) -> None:
    """Overwrite the counts of existing rows, marking them not rolled up."""
    fields = [*usage.COUNTS, "rolled_up"]
    features = connection.features
    if not features.supports_update_conflicts:  # e.g. Oracle: row by row
        for row in rows:
            period = {model.period: getattr(row, model.period)}
            values = {name: getattr(row, name) for name in fields}
            model.objects.filter(policy=row.policy, **period).update(**values)
        return
    with_target = features.supports_update_conflicts_with_target
    model.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["policy", model.period] if with_target else None,
        update_fields=fields,
        batch_size=ROWS_PER_QUERY,
    )


def _locked_rows(counts: Counts) -> list[UsageMinute]:
    """The minute rows of ``counts``, locked in (policy, minute) order."""
    minutes = defaultdict(list)
    for policy, minute in counts:
        minutes[policy].append(usage.minute_start(minute))
    rows = []
    for policy in sorted(minutes):
        for chunk in _chunks(sorted(minutes[policy]), ROWS_PER_QUERY):
            rows += (
                UsageMinute.objects.select_for_update()
                .filter(policy=policy, minute__in=chunk)
                .order_by("minute")
            )
    return rows


def _run_drain_hook(batch_ids: list[str]) -> None:
    hook = drain_hook
    if hook is None:
        path = os.environ.get(DRAIN_HOOK_ENV)
        if not path:
            return
        hook = import_string(path)
    hook(batch_ids)


def _forget(client, prefix: str, batches: list[Batch]) -> None:
    """Delete recorded batches from Redis, then tell their rows so."""
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.delete(usage.batch_key(prefix, batch.shard, batch.batch_id))
        pipe.delete(usage.batch_top_key(prefix, batch.shard, batch.batch_id))
        pipe.srem(usage.batches_key(prefix, batch.shard), batch.batch_id)
    pipe.execute()
    for chunk in _chunks([b.batch_id for b in batches], ROWS_PER_QUERY):
        DrainBatch.objects.filter(batch_id__in=chunk).update(key_deleted=True)


# -- roll-up -------------------------------------------------------------------

PERIOD_LENGTHS = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}


def rollup_usage() -> int:
    """Recompute the hour rows of changed minute rows, then the day rows of
    changed hour rows. Idempotent; returns the number of rows recomputed."""
    return _roll_up(UsageMinute, UsageHour) + _roll_up(UsageHour, UsageDay)


def _roll_up(source, target) -> int:
    dirty = list(
        source.objects.filter(rolled_up=False)
        .annotate(start=Trunc(source.period, target.period, tzinfo=UTC))
        .values_list("policy", "start")
        .distinct()
        .order_by("policy", "start")
    )
    size = ROLLUP_PAIRS_PER_TRANSACTION
    for first in range(0, len(dirty), size):
        with transaction.atomic():
            for policy, start in dirty[first : first + size]:
                _recompute(source, target, policy, start)
    return len(dirty)


def _recompute(source, target, policy: str, start: datetime) -> None:
    """One coarse row from all its fine rows, which are then marked rolled up.

    The fine rows stay locked until the commit, so a drain adding to one of
    them meanwhile waits, then marks it changed again.
    """
    end = start + PERIOD_LENGTHS[target.period]
    window = {f"{source.period}__gte": start, f"{source.period}__lt": end}
    rows = list(
        source.objects.select_for_update()
        .filter(policy=policy, **window)
        .values_list("pk", *usage.COUNTS)
    )
    if not rows:
        return
    sums = {
        name: sum(row[i + 1] for row in rows) for i, name in enumerate(usage.COUNTS)
    }
    if hasattr(target, "rolled_up"):
        sums["rolled_up"] = False
    target.objects.update_or_create(
        policy=policy, **{target.period: start}, defaults=sums
    )
    source.objects.filter(pk__in=[row[0] for row in rows]).update(rolled_up=True)


# -- retention -----------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """How long each table keeps its rows; None keeps them forever."""

    minute: timedelta | None
    hour: timedelta | None
    day: timedelta | None


def retention() -> Retention:
    """The retention settings, checked: an hour table that keeps less than a
    day more than the minute table would leave a gap in ``stats.totals``."""
    values = {}
    for period in ("minute", "hour", "day"):
        name = f"USAGE_{period.upper()}_RETENTION"
        value = usage.setting(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 86400
        ):
            raise ImproperlyConfigured(
                f"RATELIMIT[{name!r}] = {value!r}: use whole seconds, at least "
                "86400 (one day), or None to keep the rows forever."
            )
        values[period] = None if value is None else timedelta(seconds=value)
    minute, hour = values["minute"], values["hour"]
    if minute is not None and hour is not None and hour < minute + timedelta(days=1):
        raise ImproperlyConfigured(
            "RATELIMIT['USAGE_HOUR_RETENTION'] must be at least one day longer "
            "than RATELIMIT['USAGE_MINUTE_RETENTION'] (or None)."
        )
    return Retention(**values)


def prune_usage(now: datetime | None = None) -> dict[str, int]:
    """Delete rows past retention (fine rows only once rolled up); returns
    the number deleted per table."""
    now = now if now is not None else timezone.now()
    keep = retention()
    deleted = {}
    for model, period in ((UsageMinute, keep.minute), (UsageHour, keep.hour)):
        if period is not None:
            old = model.objects.filter(
                **{f"{model.period}__lt": now - period}, rolled_up=True
            )
            deleted[model.period] = old.delete()[0]
    if keep.hour is not None:
        old = UsageOffender.objects.filter(hour__lt=now - keep.hour)
        deleted["offenders"] = old.delete()[0]
    if keep.day is not None:
        deleted["day"] = UsageDay.objects.filter(day__lt=now - keep.day).delete()[0]
    key_expired = now - timedelta(seconds=usage.ttl_seconds()) - DRAIN_BATCH_GRACE
    old_batches = DrainBatch.objects.filter(
        Q(key_deleted=True, drained_at__lt=now - DRAIN_BATCH_GRACE)
        | Q(drained_at__lt=key_expired)
    )
    deleted["batches"] = old_batches.delete()[0]
    return deleted
