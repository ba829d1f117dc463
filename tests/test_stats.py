"""Usage statistics: the counter format, drain, roll-up, prune and totals."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.usage import by_period, record_decisions, rows_of
from ratelimit_app import aggregation, conf, stats, usage
from ratelimit_app.models import (
    DrainBatch,
    UsageDay,
    UsageHour,
    UsageMinute,
    UsageOffender,
)

pytestmark = pytest.mark.django_db

NOW_MINUTE = int(time.time() // 60)
DAY = 1440  # minutes


def minute_at(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def record(client, shard, minute, scope, *counts) -> None:
    usage.record_usage(client, shard, minute, scope, *counts)


def prefixed_keys(client) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{conf.key_prefix()}*"))


def totals_of(expected, policy) -> dict[str, int]:
    sums = [0, 0, 0, 0]
    for (name, _minute), values in expected.items():
        if name == policy:
            sums = [a + b for a, b in zip(sums, values, strict=True)]
    return dict(zip(usage.COUNTS, sums, strict=True))


@pytest.fixture
def hook(monkeypatch):
    """Set the drain's test hook for this test."""

    def set_hook(function):
        monkeypatch.setattr(aggregation, "drain_hook", function)

    return set_hook


# -- the counter format --------------------------------------------------------


@pytest.mark.parametrize(
    "scope", ["api", "api|v2", "|", "||x||", "lögin", "a b", "p" * 255]
)
def test_fields_round_trip_any_scope(scope):
    for code, name in usage.METRICS.items():
        field = usage.encode_field(NOW_MINUTE, scope, code)
        assert usage.parse_field(field.encode()) == usage.UsageField(
            NOW_MINUTE, scope, name
        )


@pytest.mark.parametrize(
    "field",
    [
        b"",
        b"api",
        b"29000000|api",
        b"x|api|a",
        b"-5|api|a",
        "\uff12\uff19|api|a".encode(),  # fullwidth digits
        b"29000000|api|z",
        b"29000000||a",
        b"29000000|a\x00b|a",
        b"\xff|api|a",
        b"29000000|\xff|a",
        b"99999999999|api|a",
        b"29000000|" + b"p" * 256 + b"|a",
    ],
)
def test_unreadable_fields_are_refused(field):
    with pytest.raises(ValueError):
        usage.parse_field(field)


@pytest.mark.parametrize(
    ("value", "count"),
    [(b"0", 0), (b"17", 17), (b"9223372036854775807", 2**63 - 1), ("5", 5)],
)
def test_counter_values_parse(value, count):
    assert usage.parse_count(value) == count


@pytest.mark.parametrize(
    "value", [b"", b"-1", b"1.5", b"abc", b" 1", b"1_000", b"9223372036854775808"]
)
def test_unreadable_counter_values_are_refused(value):
    with pytest.raises(ValueError):
        usage.parse_count(value)


def test_key_names_share_the_shard_hash_tag():
    prefix = conf.key_prefix()
    assert usage.live_key(prefix, 417) == f"{prefix}{{s417}}:usage"
    assert usage.batch_key(prefix, 417, "b1") == f"{prefix}{{s417}}:usage:batch:b1"
    assert usage.batches_key(prefix, 417) == f"{prefix}{{s417}}:usage:batches"


def test_recording_counts_into_the_shard_hash_with_a_ttl(redis_client):
    record(redis_client, 3, NOW_MINUTE, "api|v2", 2, 1, 1, 7)
    record(redis_client, 3, NOW_MINUTE, "api|v2", 1)
    key = usage.live_key(conf.key_prefix(), 3)
    assert redis_client.hgetall(key) == {
        f"{NOW_MINUTE}|api|v2|a".encode(): b"3",
        f"{NOW_MINUTE}|api|v2|b".encode(): b"1",
        f"{NOW_MINUTE}|api|v2|s".encode(): b"1",
        f"{NOW_MINUTE}|api|v2|c".encode(): b"7",
    }
    ttl = usage.ttl_seconds()
    assert ttl == 7 * 24 * 3600
    assert (ttl - 60) * 1000 < redis_client.pttl(key) <= ttl * 1000


# -- drain ---------------------------------------------------------------------


def test_drain_moves_counts_exactly_and_leaves_no_keys(redis_client):
    record(redis_client, 0, NOW_MINUTE, "api", 5, 2, 1, 9)
    record(redis_client, 1023, NOW_MINUTE, "api", 1, 0, 0, 1)
    record(redis_client, 7, NOW_MINUTE - 1, "api", 3)
    record(redis_client, 7, NOW_MINUTE, "login|admin", 0, 4)
    report = aggregation.drain_usage()
    assert report == aggregation.DrainReport(recorded=3)
    assert rows_of(UsageMinute) == {
        ("api", NOW_MINUTE): [6, 2, 1, 10],
        ("api", NOW_MINUTE - 1): [3, 0, 0, 0],
        ("login|admin", NOW_MINUTE): [0, 4, 0, 0],
    }
    assert DrainBatch.objects.filter(key_deleted=True).count() == 3
    assert prefixed_keys(redis_client) == []


def test_drain_reads_unit_admissions_into_allowed_and_cost(redis_client):
    key = usage.live_key(conf.key_prefix(), 9)
    redis_client.hset(
        key,
        mapping={
            usage.encode_field(NOW_MINUTE, "api", "u"): 4,  # cost 1 each
            usage.encode_field(NOW_MINUTE, "api", "a"): 1,  # one of cost 5
            usage.encode_field(NOW_MINUTE, "api", "c"): 5,
        },
    )
    aggregation.drain_usage()
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [5, 0, 0, 9]}


def test_a_second_drain_adds_to_the_same_rows(redis_client):
    record(redis_client, 5, NOW_MINUTE, "api", 2, 1, 0, 2)
    aggregation.drain_usage()
    record(redis_client, 5, NOW_MINUTE, "api", 1, 1, 1, 3)
    record(redis_client, 6, NOW_MINUTE, "api", 1)
    assert aggregation.drain_usage().recorded == 2
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [4, 2, 1, 5]}


def test_a_drain_with_nothing_recorded_does_nothing(redis_client):
    assert aggregation.drain_usage() == aggregation.DrainReport()
    assert not DrainBatch.objects.exists()
    assert prefixed_keys(redis_client) == []


def test_garbage_fields_are_skipped_and_logged(redis_client, caplog):
    record(redis_client, 2, NOW_MINUTE, "api", 4, 1)
    redis_client.hset(
        usage.live_key(conf.key_prefix(), 2),
        mapping={
            f"{NOW_MINUTE}|api|a": b"lots",
            f"{NOW_MINUTE}|api|q": 1,
            "no-pipes": 1,
            b"\xff\xfe|api|a": 1,
            f"{NOW_MINUTE}|api|c": -3,
        },
    )
    with caplog.at_level(logging.WARNING, logger="ratelimit_app"):
        report = aggregation.drain_usage()
    assert report.skipped == 5
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [0, 1, 0, 0]}
    assert "skipped 5 unreadable field(s)" in caplog.text
    assert "b'lots'" in caplog.text
    assert prefixed_keys(redis_client) == []


def test_a_counter_key_of_the_wrong_type_is_dropped_and_logged(redis_client, caplog):
    redis_client.set(usage.live_key(conf.key_prefix(), 4), "not a hash")
    record(redis_client, 5, NOW_MINUTE, "api", 1)
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
        report = aggregation.drain_usage()
    assert report.skipped == 1
    assert "not a hash" in caplog.text
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [1, 0, 0, 0]}
    assert prefixed_keys(redis_client) == []


def database_down(batch_ids):
    raise OperationalError("server closed the connection unexpectedly")


def test_a_database_failure_before_the_commit_loses_nothing(redis_client, hook):
    record(redis_client, 1, NOW_MINUTE, "api", 3, 1, 0, 3)
    record(redis_client, 2, NOW_MINUTE, "api", 1)
    hook(database_down)
    for _ in range(2):  # a failing database leaves one batch per shard behind
        with pytest.raises(OperationalError):
            aggregation.drain_usage()
        record(redis_client, 1, NOW_MINUTE, "api", 1)
    prefix = conf.key_prefix()
    assert redis_client.scard(usage.batches_key(prefix, 1)) == 1
    assert redis_client.scard(usage.batches_key(prefix, 2)) == 1
    assert not UsageMinute.objects.exists()
    assert not DrainBatch.objects.exists()

    hook(None)
    report = aggregation.drain_usage()
    assert report.recorded == 3  # two left behind, then the new live hash
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [6, 1, 0, 3]}
    assert prefixed_keys(redis_client) == []


def test_a_recorded_batch_left_behind_is_deleted_not_counted_again(
    redis_client, monkeypatch
):
    record(redis_client, 9, NOW_MINUTE, "api", 2, 0, 0, 2)
    forget = aggregation._forget

    def crash(*args):
        raise RedisConnectionError("lost Redis after the commit")

    monkeypatch.setattr(aggregation, "_forget", crash)
    with pytest.raises(RedisConnectionError):
        aggregation.drain_usage()
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [2, 0, 0, 2]}
    assert redis_client.scard(usage.batches_key(conf.key_prefix(), 9)) == 1

    monkeypatch.setattr(aggregation, "_forget", forget)
    record(redis_client, 9, NOW_MINUTE, "api", 1)
    report = aggregation.drain_usage()
    assert report == aggregation.DrainReport(recorded=1, cleaned=1)
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [3, 0, 0, 2]}
    assert prefixed_keys(redis_client) == []


def test_an_expired_batch_is_logged_as_lost(redis_client, hook, caplog):
    record(redis_client, 3, NOW_MINUTE, "api", 2)
    hook(database_down)
    with pytest.raises(OperationalError):
        aggregation.drain_usage()
    (batch_id,) = redis_client.smembers(usage.batches_key(conf.key_prefix(), 3))
    redis_client.delete(usage.batch_key(conf.key_prefix(), 3, batch_id.decode()))
    hook(None)
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
        assert aggregation.drain_usage().recorded == 1
    assert "expired before they were recorded" in caplog.text
    assert not UsageMinute.objects.exists()
    assert prefixed_keys(redis_client) == []


def test_a_script_flush_under_the_drain_is_survived(redis_client, monkeypatch):
    record(redis_client, 0, NOW_MINUTE, "api", 1)
    record(redis_client, 900, NOW_MINUTE, "api", 2)
    load, calls = redis_client.script_load, []

    def flushed_once(source):
        calls.append(source)
        return "0" * 40 if len(calls) == 1 else load(source)  # NOSCRIPT, once

    monkeypatch.setattr(redis_client, "script_load", flushed_once)
    assert aggregation.drain_usage(redis_client).recorded == 2
    assert rows_of(UsageMinute) == {("api", NOW_MINUTE): [3, 0, 0, 0]}
    assert prefixed_keys(redis_client) == []


def drain_retrying(errors: list, attempts: int = 100) -> aggregation.DrainReport:
    """A drain retried on database errors, as the Celery task retries it."""
    for _ in range(attempts - 1):
        try:
            return aggregation.drain_usage()
        except OperationalError as exc:  # in-memory SQLite: "table is locked"
            errors.append(exc)
            time.sleep(0.05)
    return aggregation.drain_usage()


@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_count_each_batch_once(redis_client, hook):
    """Drain A stops inside its transaction; drain B starts and meets A's
    uncommitted batches; A commits; B must skip them and record the rest."""
    expected = record_decisions(
        redis_client,
        2000,
        seed=1,
        last_minute=NOW_MINUTE,
        minutes=30,
        shards=conf.shard_count(),
        prefix=conf.key_prefix(),
    )
    paused, release = threading.Event(), threading.Event()
    reports, errors = {}, {"drain-a": [], "drain-b": []}

    def pause_drain_a(batch_ids):
        if threading.current_thread().name == "drain-a":
            paused.set()
            assert release.wait(10)

    def run(name):
        try:
            reports[name] = drain_retrying(errors[name])
        finally:
            connections.close_all()

    hook(pause_drain_a)
    drain_a = threading.Thread(target=run, args=("drain-a",), name="drain-a")
    drain_a.start()
    assert paused.wait(10)
    record_decisions(
        redis_client,
        2000,
        seed=2,
        last_minute=NOW_MINUTE,
        minutes=30,
        shards=conf.shard_count(),
        prefix=conf.key_prefix(),
        expected=expected,
    )
    drain_b = threading.Thread(target=run, args=("drain-b",), name="drain-b")
    drain_b.start()
    time.sleep(0.5)  # B reads A's batches and waits for A's transaction
    release.set()
    drain_a.join(20)
    drain_b.join(20)

    drain_a, drain_b = reports["drain-a"], reports["drain-b"]
    # B met A's uncommitted batches and skipped them once A committed (or the
    # database lock held B off until A was done: in-memory SQLite).
    assert drain_b.cleaned == drain_a.recorded or errors["drain-b"]
    assert rows_of(UsageMinute) == expected
    assert prefixed_keys(redis_client) == []


def test_a_hundred_thousand_decisions_aggregate_exactly(redis_client):
    expected = {}
    for seed in range(4):  # recording and draining in turns
        record_decisions(
            redis_client,
            25_000,
            seed=seed,
            last_minute=NOW_MINUTE,
            minutes=3 * 60,
            shards=conf.shard_count(),
            prefix=conf.key_prefix(),
            expected=expected,
        )
        aggregation.drain_usage()
    aggregation.rollup_usage()
    assert rows_of(UsageMinute) == expected
    assert rows_of(UsageHour) == by_period(expected, timedelta(hours=1))
    assert rows_of(UsageDay) == by_period(expected, timedelta(days=1))
    decisions = 0
    for policy in {policy for policy, _minute in expected}:
        sums = stats.totals(policy)
        assert sums == totals_of(expected, policy)
        decisions += sums["allowed"] + sums["blocked"]
    assert decisions == 100_000
    assert prefixed_keys(redis_client) == []


# -- roll-up and prune ---------------------------------------------------------


def test_rollup_builds_hour_and_day_rows_and_is_idempotent(redis_client):
    midnight = NOW_MINUTE - NOW_MINUTE % DAY
    for minute, counts in (
        (midnight - 61, (1, 0, 0, 1)),  # yesterday, 22:59
        (midnight - 1, (2, 1, 0, 2)),  # yesterday, 23:59
        (midnight, (4, 0, 1, 4)),  # today, 00:00
        (midnight + 59, (8, 2, 0, 8)),  # today, 00:59
    ):
        record(redis_client, minute % 11, minute, "api", *counts)
    aggregation.drain_usage()
    assert aggregation.rollup_usage() == 3 + 2  # three hours, two days
    assert rows_of(UsageHour) == {
        ("api", midnight - 120): [1, 0, 0, 1],
        ("api", midnight - 60): [2, 1, 0, 2],
        ("api", midnight): [12, 2, 1, 12],
    }
    assert rows_of(UsageDay) == {
        ("api", midnight - DAY): [3, 1, 0, 3],
        ("api", midnight): [12, 2, 1, 12],
    }
    assert aggregation.rollup_usage() == 0
    assert len(rows_of(UsageHour)) == 3

    record(redis_client, 4, midnight + 30, "api", 0, 5)  # a late drain
    aggregation.drain_usage()
    assert aggregation.rollup_usage() == 2
    assert rows_of(UsageHour)[("api", midnight)] == [12, 7, 1, 12]
    assert rows_of(UsageDay)[("api", midnight)] == [12, 7, 1, 12]


def test_prune_deletes_rolled_up_rows_past_retention(redis_client):
    now = minute_at(NOW_MINUTE)
    ages = {"fresh": 60, "old": 4 * DAY, "older": 91 * DAY, "ancient": 800 * DAY}
    for policy, age in ages.items():
        record(redis_client, 1, NOW_MINUTE - age, policy, 1)
    aggregation.drain_usage()
    aggregation.rollup_usage()
    record(redis_client, 1, NOW_MINUTE - 5 * DAY, "late", 1)  # not rolled up yet
    aggregation.drain_usage()
    DrainBatch.objects.update(drained_at=now - timedelta(days=2))
    DrainBatch.objects.create(batch_id="crashed-before-delete")
    DrainBatch.objects.filter(batch_id="crashed-before-delete").update(
        drained_at=now - timedelta(days=7)
    )

    for policy, age in (("recent", 2 * DAY), ("stale", 91 * DAY)):
        UsageOffender.objects.create(
            policy=policy, hour=minute_at(NOW_MINUTE - age), identity="x", blocked=1
        )

    deleted = aggregation.prune_usage(now=now)

    assert deleted == {"minute": 3, "hour": 2, "day": 1, "batches": 2, "offenders": 1}
    assert list(UsageOffender.objects.values_list("policy", flat=True)) == ["recent"]
    assert sorted(UsageMinute.objects.values_list("policy", flat=True)) == [
        "fresh",
        "late",
    ]
    assert sorted(UsageHour.objects.values_list("policy", flat=True)) == [
        "fresh",
        "old",
    ]
    assert sorted(UsageDay.objects.values_list("policy", flat=True)) == [
        "fresh",
        "old",
        "older",
    ]
    assert list(DrainBatch.objects.values_list("batch_id", flat=True)) == [
        "crashed-before-delete"
    ]
    assert aggregation.prune_usage(now=now + timedelta(days=2))["batches"] == 1


def test_retention_settings_are_checked(monkeypatch):
    names = ("TTL", "MINUTE_RETENTION", "HOUR_RETENTION", "DAY_RETENTION")
    values = {f"USAGE_{name}": usage.setting(f"USAGE_{name}") for name in names}
    monkeypatch.setattr(usage, "setting", values.__getitem__)
    assert aggregation.retention().minute == timedelta(days=3)
    values["USAGE_HOUR_RETENTION"] = values["USAGE_MINUTE_RETENTION"]
    with pytest.raises(ImproperlyConfigured, match="at least one day longer"):
        aggregation.retention()
    values["USAGE_HOUR_RETENTION"] = None
    assert aggregation.retention().hour is None
    values["USAGE_DAY_RETENTION"] = 60
    with pytest.raises(ImproperlyConfigured, match="USAGE_DAY_RETENTION"):
        aggregation.retention()
    values["USAGE_TTL"] = "7d"
    with pytest.raises(ImproperlyConfigured, match="USAGE_TTL"):
        usage.ttl_seconds()


# -- totals --------------------------------------------------------------------


def test_totals_count_the_minutes_in_a_half_open_range(redis_client):
    for offset in range(5):  # minutes m-4 .. m, 1 allowed + offset blocked
        record(redis_client, offset, NOW_MINUTE - offset, "api", 1, offset, 0, 2)
    record(redis_client, 0, NOW_MINUTE, "other", 100)
    aggregation.drain_usage()
    zero = dict.fromkeys(usage.COUNTS, 0)

    assert stats.totals("api") == {
        "allowed": 5,
        "blocked": 10,
        "shadow_blocked": 0,
        "cost": 10,
    }
    since, until = minute_at(NOW_MINUTE - 3), minute_at(NOW_MINUTE - 1)
    assert stats.totals("api", since, until) == {
        **zero,
        "allowed": 2,
        "blocked": 5,
        "cost": 4,
    }
    assert stats.totals("api", since=minute_at(NOW_MINUTE))["blocked"] == 0
    assert stats.totals("api", until=minute_at(NOW_MINUTE))["blocked"] == 10
    assert stats.totals("api", since, since) == zero
    assert stats.totals("nobody") == zero


def test_totals_read_hours_and_days_once_minutes_are_pruned(redis_client):
    now = minute_at(NOW_MINUTE)
    expected = {}
    for age in (30, 2 * DAY, 5 * DAY + 7, 20 * DAY, 120 * DAY, 121 * DAY):
        minute = NOW_MINUTE - age
        record(redis_client, age % 13, minute, "api", 1, 1, 0, 1)
        expected[("api", minute)] = [1, 1, 0, 1]
    aggregation.drain_usage()
    aggregation.rollup_usage()
    aggregation.prune_usage(now=now)
    assert UsageMinute.objects.count() == 2
    assert UsageHour.objects.count() == 4

    everything = stats.totals("api", now=now)
    assert everything == {"allowed": 6, "blocked": 6, "shadow_blocked": 0, "cost": 6}
    # Past the minute retention a range counts the hours that start in it.
    minute = NOW_MINUTE - 5 * DAY - 7
    old_hour = minute_at(minute - minute % 60)
    assert (
        stats.totals("api", old_hour, old_hour + timedelta(hours=1), now=now)["allowed"]
        == 1
    )
    # Past the hour retention, the days that start in it.
    old_day = minute_at(NOW_MINUTE - 120 * DAY - NOW_MINUTE % DAY)
    assert (
        stats.totals("api", old_day, old_day + timedelta(days=1), now=now)["allowed"]
        == 1
    )
    assert stats.totals("api", until=now - timedelta(days=100), now=now)["allowed"] == 2


def test_the_pipeline_works_without_time_zone_support(redis_client, settings):
    settings.USE_TZ = False
    midnight = NOW_MINUTE - NOW_MINUTE % DAY
    record(redis_client, 1, midnight - 1, "api", 2, 1, 0, 2)
    record(redis_client, 2, midnight + 1, "api", 3)
    aggregation.drain_usage()
    aggregation.rollup_usage()
    assert UsageMinute.objects.first().minute.tzinfo is None
    assert rows_of(UsageDay) == {
        ("api", midnight - DAY): [2, 1, 0, 2],
        ("api", midnight): [3, 0, 0, 0],
    }
    assert stats.totals("api", since=minute_at(midnight).replace(tzinfo=None)) == {
        "allowed": 3,
        "blocked": 0,
        "shadow_blocked": 0,
        "cost": 0,
    }
    aggregation.prune_usage()


def test_ceil_time_rounds_up_to_the_unit():
    hour = timedelta(hours=1)
    moment = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert stats.ceil_time(moment, hour) == moment
    assert stats.ceil_time(moment + timedelta(seconds=1), hour) == moment + hour


@pytest.mark.django_db
def test_requests_counted_by_the_decision_script_reach_the_database(client):
    """End to end: middleware decisions → live counters → drain → totals."""
    from ratelimit_app.aggregation import drain_usage as drain
    from ratelimit_app.stats import totals
    from tests.policy_helpers import policies as with_policies

    with with_policies(
        {"name": "e2e", "rate": "3/m", "path": "/plain/", "cost": 2, "burst": 6},
        {"name": "e2e-shadow", "rate": "1/m", "path": "/plain/", "mode": "shadow"},
    ):
        codes = [client.get("/plain/").status_code for _ in range(5)]
        drain()
    assert codes == [200, 200, 200, 429, 429]
    assert totals("e2e") == {"allowed": 3, "blocked": 2, "shadow_blocked": 0, "cost": 6}
    # The shadow policy consumed with the first request, would have blocked
    # the next two allowed ones and the two blocked ones.
    assert totals("e2e-shadow") == {
        "allowed": 1,
        "blocked": 0,
        "shadow_blocked": 4,
        "cost": 1,
    }
