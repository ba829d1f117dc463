"""The usage dashboard's data: three ranges of a policy's series, charted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from . import charts, stats, usage
from .aggregation import PERIOD_LENGTHS
from .models import Policy, UsageDay, UsageHour, UsageMinute

# Where "now" comes from; tests swap it.
clock = timezone.now


@dataclass(frozen=True)
class Range:
    """A chart: the last ``length`` periods, the current one included."""

    slug: str
    title: str
    period: str  # minute, hour or day: one bar each
    length: int
    axis: charts.Axis

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """[since, until) on period boundaries, ending after the current period."""
        unit = PERIOD_LENGTHS[self.period]
        until = stats.floor_time(now, unit) + unit
        return until - self.length * unit, until


RANGES = (
    Range(
        "hour",
        _("Last hour, by minute"),
        "minute",
        60,
        charts.Axis("%H:%M", 10, "%Y-%m-%d %H:%M UTC"),
    ),
    Range(
        "day",
        _("Last 24 hours, by hour"),
        "hour",
        24,
        charts.Axis("%H:00", 3, "%Y-%m-%d %H:00 UTC"),
    ),
    Range(
        "month",
        _("Last 30 days, by day"),
        "day",
        30,
        charts.Axis("%m-%d", 5, "%Y-%m-%d UTC"),
    ),
)


@dataclass(frozen=True)
class Chart:
    """One range of one policy (None: all policies), ready to draw."""

    range: Range
    since: datetime
    until: datetime
    buckets: list[stats.Bucket]

    @cached_property
    def totals(self) -> dict[str, int]:
        """The sums of the bars (equal to ``stats.totals`` for the window)."""
        return {
            name: sum(b.counts[name] for b in self.buckets) for name in usage.COUNTS
        }

    @cached_property
    def svg(self) -> SafeString:
        return charts.bar_chart(self.buckets, self.range.axis, str(self.range.title))


def build_charts(policy: str | None, now: datetime | None = None) -> list[Chart]:
    """Every range of ``policy`` (None: all policies), oldest bucket first."""
    now = now if now is not None else clock()
    result = []
    for chart_range in RANGES:
        since, until = chart_range.window(now)
        buckets = stats.series(policy, chart_range.period, since, until, now=now)
        result.append(Chart(chart_range, since, until, buckets))
    return result


@dataclass(frozen=True)
class ClientsChart:
    """Distinct clients of one policy over one range (never summed)."""

    range: Range
    points: list[stats.Distinct]

    @cached_property
    def svg(self) -> SafeString:
        return charts.clients_chart(self.points, self.range.axis, str(self.range.title))


def build_clients_charts(
    policy: str, now: datetime | None = None
) -> list[ClientsChart]:
    """Every range's distinct clients of ``policy`` (one policy: clients of
    different policies cannot be added up)."""
    now = now if now is not None else clock()
    result = []
    for chart_range in RANGES:
        since, until = chart_range.window(now)
        points = stats.distinct_clients(policy, chart_range.period, since, until)
        result.append(ClientsChart(chart_range, points))
    return result


# The ranges whose top offenders the page lists (offenders are kept per hour).
OFFENDER_RANGES = {"day": _("Last 24 hours"), "month": _("Last 30 days")}
TOP_OFFENDERS = 10


@dataclass(frozen=True)
class OffenderTable:
    range: Range
    title: str
    since: datetime
    until: datetime
    offenders: list[stats.Offender]


def build_offender_tables(
    policy: str | None, now: datetime | None = None
) -> list[OffenderTable]:
    """The most denied clients of ``policy`` (None: any policy) per range."""
    now = now if now is not None else clock()
    tables = []
    for chart_range in RANGES:
        if chart_range.slug in OFFENDER_RANGES:
            since, until = chart_range.window(now)
            top = stats.top_offenders(policy, since, until, limit=TOP_OFFENDERS)
            title = OFFENDER_RANGES[chart_range.slug]
            tables.append(OffenderTable(chart_range, title, since, until, top))
    return tables


def policy_names(now: datetime | None = None) -> list[str]:
    """Names to choose from: policy rows, and every policy with usage rows in
    the longest range (settings and code policies, deleted ones)."""
    now = now if now is not None else clock()
    since = RANGES[-1].window(now)[0]
    names = set(Policy.objects.values_list("name", flat=True))
    for model in (UsageMinute, UsageHour, UsageDay):
        rows = model.objects.filter(**{f"{model.period}__gte": since})
        names.update(rows.values_list("policy", flat=True).distinct().order_by())
    return sorted(names)
