"""Reading the usage statistics from the database: totals and series per policy."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Max, QuerySet, Sum
from django.db.models.functions import Trunc
from django.utils import timezone

from . import usage
from .aggregation import PERIOD_LENGTHS, retention
from .models import UsageDay, UsageHour, UsageMinute, UsageOffender

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUMS = {f"sum_{name}": Sum(name) for name in usage.COUNTS}


def totals(
    policy: str,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """``allowed``, ``blocked``, ``shadow_blocked`` and ``cost`` of a policy.

    Counts every period whose start lies in ``[since, until)`` (None: open).
    Recent time is read from the minute rows; time the minute retention has
    pruned (or may soon prune) from the hour rows, and time beyond the hour
    retention from the day rows, so there a range counts whole hours or days.
    Only drained counts are included (the drain runs every minute).
    """
    result = dict.fromkeys(usage.COUNTS, 0)
    for rows in _rows(policy, since, until, now):
        sums = rows.aggregate(**_SUMS)
        for name in usage.COUNTS:
            result[name] += sums[f"sum_{name}"] or 0
    return result


@dataclass(frozen=True)
class Bucket:
    """The counts of one bucket of a series: ``counts`` has ``usage.COUNTS``."""

    start: datetime
    counts: dict[str, int]


def series(
    policy: str | None,
    period: str,
    since: datetime,
    until: datetime,
    *,
    now: datetime | None = None,
) -> list[Bucket]:
    """``totals`` per ``period`` ("minute", "hour" or "day", UTC) in
    ``[since, until)``, oldest first; ``policy`` None sums every policy.

    Reads the same rows as ``totals``, so with ``since`` and ``until`` on
    period boundaries the buckets add up to ``totals(policy, since, until)``.
    A bucket without rows is zero; a row coarser than the bucket (an hour
    row past the minute retention) counts in the bucket of its start.
    """
    unit = PERIOD_LENGTHS[period]
    sums = defaultdict(lambda: dict.fromkeys(usage.COUNTS, 0))
    for rows in _rows(policy, since, until, now):
        per_bucket = (
            rows.annotate(bucket=Trunc(rows.model.period, period, tzinfo=UTC))
            .values("bucket")
            .order_by()
            .annotate(**_SUMS)
        )
        for row in per_bucket:
            counts = sums[as_utc(row["bucket"])]
            for name in usage.COUNTS:
                counts[name] += row[f"sum_{name}"] or 0
    start, end = floor_time(as_utc(since), unit), as_utc(until)
    starts = [start + i * unit for i in range(-(-(end - start) // unit))]
    return [Bucket(_local(s, since), dict(sums[s])) for s in starts]


@dataclass(frozen=True)
class Distinct:
    """Distinct clients of a policy in one period (a HyperLogLog estimate)."""

    start: datetime
    clients: int


def distinct_clients(
    policy: str, period: str, since: datetime, until: datetime
) -> list[Distinct]:
    """Distinct clients of ``policy`` per ``period`` ("minute", "hour" or
    "day") starting in ``[since, until)``, oldest first; 0 where none.

    Each value was merged from the clients themselves, not summed: the
    clients of an hour are not the sum of its minutes', so do not add them.
    """
    model = _PERIOD_MODELS[period]
    unit = PERIOD_LENGTHS[period]
    rows = model.objects.filter(
        policy=policy, **{f"{period}__gte": since, f"{period}__lt": until}
    ).values_list(period, "distinct_clients")
    found = {as_utc(start): clients for start, clients in rows}
    start, end = ceil_time(as_utc(since), unit), as_utc(until)
    starts = [start + i * unit for i in range(max(0, -(-(end - start) // unit)))]
    return [Distinct(_local(s, since), found.get(s, 0)) for s in starts]


_PERIOD_MODELS = {"minute": UsageMinute, "hour": UsageHour, "day": UsageDay}


@dataclass(frozen=True)
class Offender:
    identity: str  # the keyed hash of the identity, as in the Redis keys
    label: str  # safe to show: a masked IP, a user id, or "#" and the hash's start
    blocked: int  # denials in the range


def top_offenders(
    policy: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    limit: int = 10,
) -> list[Offender]:
    """The identities ``policy`` (None: any policy) denied most in the hours
    starting in ``[since, until)``, most denied first.

    Counted per hour and kept for each hour's top ``USAGE_OFFENDERS_KEPT``,
    so an identity that was never near the top of an hour may be missing.
    """
    rows = UsageOffender.objects.all()
    if policy is not None:
        rows = rows.filter(policy=policy)
    if since is not None:
        rows = rows.filter(hour__gte=since)
    if until is not None:
        rows = rows.filter(hour__lt=until)
    top = (
        rows.values("identity")
        .annotate(denials=Sum("blocked"), label=Max("label"))
        .order_by("-denials", "identity")[:limit]
    )
    return [
        Offender(
            row["identity"], row["label"] or f"#{row['identity'][:8]}", row["denials"]
        )
        for row in top
    ]


def _rows(policy, since, until, now) -> list[QuerySet]:
    """The rows of ``policy`` (None: all) in ``[since, until)``, one queryset
    per table, each table read only for the time ``_sources`` gives it."""
    now = now if now is not None else timezone.now()
    querysets = []
    for model, start, end in _sources(now):
        start, end = _bound(max, start, since), _bound(min, end, until)
        if start is not None and end is not None and start >= end:
            continue
        window = {} if policy is None else {"policy": policy}
        if start is not None:
            window[f"{model.period}__gte"] = start
        if end is not None:
            window[f"{model.period}__lt"] = end
        querysets.append(model.objects.filter(**window))
    return querysets


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive ones, with USE_TZ off, are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _local(moment: datetime, like: datetime) -> datetime:
    """``moment`` naive when ``like`` is, as the caller gave its bounds."""
    return moment.replace(tzinfo=None) if like.tzinfo is None else moment


def _sources(now: datetime) -> list[tuple[type, datetime | None, datetime | None]]:
    """(table, from, to) covering all time: minutes, then hours, then days."""
    keep = retention()
    if keep.minute is None:
        return [(UsageMinute, None, None)]
    minutes_from = ceil_time(now - keep.minute, timedelta(hours=1))
    if keep.hour is None:
        return [(UsageMinute, minutes_from, None), (UsageHour, None, minutes_from)]
    hours_from = ceil_time(now - keep.hour, timedelta(days=1))
    return [
        (UsageMinute, minutes_from, None),
        (UsageHour, hours_from, minutes_from),
        (UsageDay, None, hours_from),
    ]


def _bound(pick, a: datetime | None, b: datetime | None) -> datetime | None:
    """``pick(a, b)`` where None stands for no bound."""
    return b if a is None else a if b is None else pick(a, b)


def floor_time(moment: datetime, unit: timedelta) -> datetime:
    """The last multiple of ``unit`` since the epoch at or before ``moment``."""
    epoch = _EPOCH if moment.tzinfo else _EPOCH.replace(tzinfo=None)  # USE_TZ
    return epoch + (moment - epoch) // unit * unit


def ceil_time(moment: datetime, unit: timedelta) -> datetime:
    """The first multiple of ``unit`` since the epoch at or after ``moment``."""
    epoch = _EPOCH if moment.tzinfo else _EPOCH.replace(tzinfo=None)  # USE_TZ
    steps, rest = divmod(moment - epoch, unit)
    return epoch + (steps + (1 if rest else 0)) * unit
