"""parse_rate: table-driven good and bad strings."""

from __future__ import annotations

import pytest

from ratelimit_app.rates import Rate, parse_rate, to_rate


@pytest.mark.parametrize(
    ("text", "limit", "period_ms"),
    [
        ("5/s", 5, 1_000),
        ("100/m", 100, 60_000),
        ("100/min", 100, 60_000),
        ("1000/h", 1_000, 3_600_000),
        ("10000/d", 10_000, 86_400_000),
        ("100/5m", 100, 300_000),
        ("100/300s", 100, 300_000),
        ("10 per minute", 10, 60_000),
        ("10/2 hours", 10, 7_200_000),
        ("10 per 2 hours", 10, 7_200_000),
        ("1/sec", 1, 1_000),
        ("3/seconds", 3, 1_000),
        ("7/hr", 7, 3_600_000),
        ("2/day", 2, 86_400_000),
        ("2/days", 2, 86_400_000),
        ("1/w", 1, 604_800_000),
        ("50/500ms", 50, 500),
        ("  20 / 10 S  ", 20, 10_000),
        ("4/M", 4, 60_000),
    ],
)
def test_parses_valid_rates(text, limit, period_ms):
    assert parse_rate(text) == Rate(limit, period_ms)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "/m",
        "abc/m",
        "100/",
        "100/parsec",
        "100/5",
        "-5/m",
        "1.5/m",
        "0/m",
        "10/0m",
        "100//m",
        "100 per",
        "100/ms s",
        "10/ss",
    ],
)
def test_rejects_invalid_rates_naming_the_string_and_grammar(text):
    with pytest.raises(ValueError) as excinfo:
        parse_rate(text)
    message = str(excinfo.value)
    assert repr(text) in message
    if "at least 1" not in message:
        assert "'100/5m'" in message


@pytest.mark.parametrize("value", [None, 100, 1.5, b"100/m", ["100/m"]])
def test_rejects_non_strings(value):
    with pytest.raises(ValueError, match="must be a string"):
        parse_rate(value)


def test_to_rate_passes_rate_objects_through():
    rate = Rate(3, 1000)
    assert to_rate(rate) is rate
    assert to_rate("3/s") == rate


def test_period_in_seconds():
    assert parse_rate("1/5m").period == 300.0
