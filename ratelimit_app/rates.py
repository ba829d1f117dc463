"""Parse rate strings such as ``"100/5m"`` or ``"10 per minute"``; pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_UNITS = {
    "ms": 0.001,
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}

_RATE_RE = re.compile(
    r"^\s*(?P<limit>\d+)\s*(?:/|\s+per\s+)\s*(?P<count>\d+)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)

GRAMMAR = (
    "'<limit>/<unit>', '<limit>/<n><unit>' or '<limit> per [<n>] <unit>', "
    "where unit is one of ms, s, sec, second, m, min, minute, h, hr, hour, d, day, "
    "w, week (plurals allowed), e.g. '5/s', '100/5m', '10 per minute', "
    "'10/2 hours'"
)


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` units per ``period_ms`` milliseconds."""

    limit: int
    period_ms: int

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self.period_ms / 1000

    def __str__(self) -> str:
        return f"{self.limit}/{self.period_ms}ms"


def _unit_seconds(unit: str) -> float | None:
    unit = unit.lower()
    if unit in _UNITS:
        return _UNITS[unit]
    if unit.endswith("s") and unit[:-1] in _UNITS and len(unit) > 2:
        return _UNITS[unit[:-1]]
    return None


def parse_rate(rate: str) -> Rate:
    """Parse a rate string; raise ``ValueError`` naming it and the grammar."""
    if not isinstance(rate, str):
        raise ValueError(f"Rate must be a string such as '100/m', got {rate!r}.")
    return _parse(rate)


@lru_cache(maxsize=1024)
def _parse(rate: str) -> Rate:
    match = _RATE_RE.match(rate)
    seconds = match and _unit_seconds(match["unit"])
    if not match or seconds is None:
        raise ValueError(f"Invalid rate {rate!r}: expected {GRAMMAR}.")
    limit = int(match["limit"])
    count = int(match["count"] or 1)
    period_ms = round(count * seconds * 1000)
    if limit < 1 or period_ms < 1:
        raise ValueError(
            f"Invalid rate {rate!r}: the limit and the period must be at least 1 "
            "(to block everything, use a policy in closed mode instead)."
        )
    return Rate(limit, period_ms)


def to_rate(rate: str | Rate) -> Rate:
    """Accept a ``Rate`` or a rate string."""
    return rate if isinstance(rate, Rate) else parse_rate(rate)
