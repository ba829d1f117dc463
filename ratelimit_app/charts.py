"""Server-side SVG bar charts of usage series: no JavaScript, no external files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

from .stats import Bucket, Distinct, as_utc

# Drawing area in viewBox units; the SVG scales to its container's width.
WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 28
# Per bucket: the stacked allowed+blocked bar, then the shadow bar beside it.
STACK_SHARE, SHADOW_SHARE = 0.55, 0.25
COLORS = {
    "allowed": "#5b9b3f",
    "blocked": "#c4352b",
    "shadow_blocked": "#e0a526",
    "distinct_clients": "#3f6f9b",
}
# A one-series chart's bar share of its slot.
SINGLE_SHARE = 0.7


@dataclass(frozen=True)
class Axis:
    """How a series labels its buckets on the x axis (UTC)."""

    label_format: str  # strftime
    label_every: int  # buckets between two labels
    title_format: str  # strftime, in each bucket's tooltip


def bar_chart(buckets: Sequence[Bucket], axis: Axis, title: str) -> SafeString:
    """An SVG of ``buckets``: allowed and blocked stacked, shadow would-blocks
    beside them; each bucket a ``<g>`` with its numbers in ``data-*``
    attributes and a ``<title>`` tooltip. ``title`` is escaped."""
    top = nice_ceiling(max((_peak(b) for b in buckets), default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(buckets), 1)
    groups = [_group(b, i, slot, top, axis) for i, b in enumerate(buckets)]
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" role="img" '
        'viewBox="0 0 {} {}" width="100%" preserveAspectRatio="xMidYMid meet" '
        'data-max="{}"><title>{}</title>{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        top,
        title,
        _y_axis(top),
        _x_axis(buckets, axis, slot),
        mark_safe("".join(groups)),
    )


def clients_chart(points: Sequence[Distinct], axis: Axis, title: str) -> SafeString:
    """An SVG of distinct clients per period: one bar each, its number in
    ``data-clients`` and a ``<title>`` tooltip. ``title`` is escaped."""
    top = nice_ceiling(max((p.clients for p in points), default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(points), 1)
    bars = [_clients_bar(p, i, slot, top, axis) for i, p in enumerate(points)]
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart clients-chart" '
        'role="img" viewBox="0 0 {} {}" width="100%" '
        'preserveAspectRatio="xMidYMid meet" data-max="{}"><title>{}</title>'
        "{}{}{}</svg>",
        WIDTH,
        HEIGHT,
        top,
        title,
        _y_axis(top),
        _x_axis(points, axis, slot),
        mark_safe("".join(bars)),
    )


def _clients_bar(point: Distinct, index: int, slot: float, top: int, axis: Axis):
    height = _height(point.clients, top)
    start = as_utc(point.start)
    tooltip = _("%(start)s: %(clients)d distinct clients") % {
        "start": start.strftime(axis.title_format),
        "clients": point.clients,
    }
    return format_html(
        '<g class="bucket clients" data-period="{}" data-clients="{}"><title>{}</title>{}</g>',
        start.isoformat(),
        point.clients,
        tooltip,
        _rect(
            "distinct_clients",
            LEFT + index * slot + slot * (1 - SINGLE_SHARE) / 2,
            HEIGHT - BOTTOM - height,
            slot * SINGLE_SHARE,
            height,
        ),
    )


def legend() -> SafeString:
    """The colour key shared by every chart (HTML, coloured by dashboard.css)."""
    items = (
        ("allowed", _("allowed")),
        ("blocked", _("blocked")),
        ("shadow-blocked", _("would block (shadow mode)")),
    )
    return format_html(
        '<ul class="usage-legend">{}</ul>',
        format_html_join("", '<li><span class="swatch {}"></span> {}</li>', items),
    )


def nice_ceiling(value: int) -> int:
    """The smallest round number (1, 2, 3, 4, 5, 6 or 8 times a power of ten)
    at or above ``value``; at least 1."""
    step = 1
    while True:
        for factor in (1, 2, 3, 4, 5, 6, 8):
            if step * factor >= value:
                return step * factor
        step *= 10


def _peak(bucket: Bucket) -> int:
    counts = bucket.counts
    return max(counts["allowed"] + counts["blocked"], counts["shadow_blocked"])


def _height(value: int, top: int) -> float:
    """Bar height for ``value``; at least a pixel, so no count is invisible."""
    if not value:
        return 0.0
    return max((HEIGHT - TOP - BOTTOM) * value / top, 1.0)


def _group(bucket: Bucket, index: int, slot: float, top: int, axis: Axis) -> str:
    counts = bucket.counts
    x = LEFT + index * slot + slot * (1 - STACK_SHARE - SHADOW_SHARE) / 2
    base = HEIGHT - BOTTOM
    allowed_h = _height(counts["allowed"], top)
    blocked_h = _height(counts["blocked"], top)
    shadow_h = _height(counts["shadow_blocked"], top)
    tooltip = _(
        "%(start)s: allowed %(allowed)d, blocked %(blocked)d, "
        "would block (shadow) %(shadow)d"
    ) % {
        "start": as_utc(bucket.start).strftime(axis.title_format),
        "allowed": counts["allowed"],
        "blocked": counts["blocked"],
        "shadow": counts["shadow_blocked"],
    }
    return format_html(
        '<g class="bucket" data-period="{}" data-allowed="{}" data-blocked="{}" '
        'data-shadow-blocked="{}"><title>{}</title>{}{}{}</g>',
        as_utc(bucket.start).isoformat(),
        counts["allowed"],
        counts["blocked"],
        counts["shadow_blocked"],
        tooltip,
        _rect("allowed", x, base - allowed_h, slot * STACK_SHARE, allowed_h),
        _rect(
            "blocked",
            x,
            base - allowed_h - blocked_h,
            slot * STACK_SHARE,
            blocked_h,
        ),
        _rect(
            "shadow_blocked",
            x + slot * STACK_SHARE,
            base - shadow_h,
            slot * SHADOW_SHARE,
            shadow_h,
        ),
    )


def _rect(series: str, x: float, y: float, width: float, height: float) -> str:
    return format_html(
        '<rect class="{}" x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
        series.replace("_", "-"),
        _num(x),
        _num(y),
        _num(width),
        _num(height),
        COLORS[series],
    )


def _y_axis(top: int) -> SafeString:
    """Gridlines and labels at 0, the top and (when a whole number) half."""
    lines = []
    for value in (0, top // 2, top) if top % 2 == 0 else (0, top):
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * value / top
        lines.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}" '
                'stroke="#999" stroke-opacity="0.35"/>'
                '<text class="y-label" x="{}" y="{}" text-anchor="end" '
                'font-size="11" fill="currentColor">{}</text>',
                LEFT,
                WIDTH - RIGHT,
                _num(y),
                _num(y),
                LEFT - 6,
                _num(y + 4),
                _num(value),
            )
        )
    return mark_safe("".join(lines))


def _x_axis(buckets: Sequence[Bucket | Distinct], axis: Axis, slot: float):
    """A label under every ``axis.label_every``-th bucket, counted from the
    newest, so the current period is always labelled."""
    labels = []
    last = len(buckets) - 1
    for index, bucket in enumerate(buckets):
        if (last - index) % axis.label_every:
            continue
        labels.append(
            format_html(
                '<text class="x-label" x="{}" y="{}" text-anchor="middle" '
                'font-size="11" fill="currentColor">{}</text>',
                _num(LEFT + (index + 0.5) * slot),
                HEIGHT - BOTTOM + 16,
                as_utc(bucket.start).strftime(axis.label_format),
            )
        )
    return mark_safe("".join(labels))


def _num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
