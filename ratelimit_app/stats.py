"""Reading the usage statistics from the database: totals per policy and range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from . import usage
from .aggregation import retention
from .models import UsageDay, UsageHour, UsageMinute

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    now = now if now is not None else timezone.now()
    result = dict.fromkeys(usage.COUNTS, 0)
    for model, start, end in _sources(now):
        start, end = _bound(max, start, since), _bound(min, end, until)
        if start is not None and end is not None and start >= end:
            continue
        window = {"policy": policy}
        if start is not None:
            window[f"{model.period}__gte"] = start
        if end is not None:
            window[f"{model.period}__lt"] = end
        sums = model.objects.filter(**window).aggregate(
            **{f"sum_{name}": Sum(name) for name in usage.COUNTS}
        )
        for name in usage.COUNTS:
            result[name] += sums[f"sum_{name}"] or 0
    return result


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


def ceil_time(moment: datetime, unit: timedelta) -> datetime:
    """The first multiple of ``unit`` since the epoch at or after ``moment``."""
    epoch = _EPOCH if moment.tzinfo else _EPOCH.replace(tzinfo=None)  # USE_TZ
    steps, rest = divmod(moment - epoch, unit)
    return epoch + (steps + (1 if rest else 0)) * unit
