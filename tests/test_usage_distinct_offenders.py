"""Distinct clients (HyperLogLogs) and top offenders: counted by the decision
script, merged and recorded by the drain, exactly once."""

from __future__ import annotations

import logging

import pytest
from django.db import OperationalError

from ratelimit_app import aggregation, conf, distinct, stats, usage
from ratelimit_app.identity import MISSING, display_label
from ratelimit_app.models import UsageDay, UsageHour, UsageMinute, UsageOffender
from ratelimit_app.testing import ManualClock

pytestmark = pytest.mark.django_db

MINUTE_MS = 60_000
# A minute long past (the script takes its minute from the test clock), the
# first of an hour, so a few minutes after it stay in the same hour and day.
START_MS = 1_700_000_000_000 - 1_700_000_000_000 % (3600 * 1000)
START_MINUTE = START_MS // MINUTE_MS


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_MS)


@pytest.fixture
def counting(make_limiter, clock, redis_client):
    """A limiter counting usage under the drain's key prefix."""
    return make_limiter(clock=clock, prefix=conf.key_prefix())


def hit_clients(limiter, scope, clients, rate="1000/h", cost=1):
    for client in clients:
        limiter.hit(scope, client, rate, algorithm="fixed_window", cost=cost)


def distinct_of(model, scope="api") -> dict[int, int]:
    return {
        usage.minute_of(getattr(row, model.period)): row.distinct_clients
        for row in model.objects.filter(policy=scope)
    }


def offenders_of(scope="api") -> dict[str, int]:
    rows = UsageOffender.objects.filter(policy=scope)
    return {row.display_name: row.blocked for row in rows}


def usage_keys(redis_client, part: str) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{conf.key_prefix()}*{part}*"))


# -- distinct clients ------------------------------------------------------------


def test_distinct_clients_per_minute_hour_and_day_are_unions_not_sums(counting, clock):
    hit_clients(counting, "api", [f"c{i}" for i in range(20)] * 3)  # 20, repeated
    clock.advance(MINUTE_MS)
    hit_clients(counting, "api", [f"c{i}" for i in range(10, 40)])  # 30, 10 seen

    aggregation.drain_usage()

    assert distinct_of(UsageMinute) == {START_MINUTE: 20, START_MINUTE + 1: 30}
    assert distinct_of(UsageHour) == {START_MINUTE: 40}  # not 50
    day = START_MINUTE - START_MINUTE % 1440
    assert distinct_of(UsageDay) == {day: 40}


def test_a_minute_drained_in_two_parts_counts_its_union(counting, clock):
    hit_clients(counting, "api", [f"c{i}" for i in range(15)])
    aggregation.drain_usage()
    clock.advance(30_000)  # same minute, after the first drain
    hit_clients(counting, "api", [f"c{i}" for i in range(5, 25)])
    aggregation.drain_usage()

    assert distinct_of(UsageMinute) == {START_MINUTE: 25}
    assert distinct_of(UsageHour) == {START_MINUTE: 25}
    row = UsageMinute.objects.get(policy="api")
    assert row.allowed == 35  # the counts still add up


def test_roll_up_keeps_the_merged_distinct_counts(counting, clock):
    hit_clients(counting, "api", ["a", "b", "c"])
    clock.advance(MINUTE_MS)
    hit_clients(counting, "api", ["a", "b", "c", "d"])
    aggregation.drain_usage()
    aggregation.rollup_usage()

    hour = UsageHour.objects.get(policy="api")
    assert (hour.allowed, hour.distinct_clients) == (7, 4)
    assert UsageDay.objects.get(policy="api").distinct_clients == 4


def test_blocked_and_shadow_clients_are_distinct_clients_too(counting):
    hit_clients(counting, "api", ["a", "b"], rate="1/h")
    hit_clients(counting, "api", ["a", "b", "c"], rate="1/h")  # a, b denied
    aggregation.drain_usage()

    row = UsageMinute.objects.get(policy="api")
    assert (row.allowed, row.blocked, row.distinct_clients) == (3, 2, 3)


def test_a_drain_failing_after_the_merge_counts_nobody_twice(
    counting, redis_client, settings
):
    hit_clients(counting, "api", [f"c{i}" for i in range(12)])
    aggregation.drain_hook = fail_database
    try:
        with pytest.raises(OperationalError):
            aggregation.drain_usage()
    finally:
        aggregation.drain_hook = None
    assert not UsageMinute.objects.exists()

    aggregation.drain_usage()  # merges the same HyperLogLogs again
    aggregation.drain_usage()

    assert distinct_of(UsageMinute) == {START_MINUTE: 12}
    assert distinct_of(UsageHour) == {START_MINUTE: 12}


def fail_database(batch_ids):
    raise OperationalError("database went away (test)")


def test_drain_deletes_shard_logs_of_ended_minutes_and_keeps_merged_ones_with_ttl(
    counting, redis_client
):
    hit_clients(counting, "api", [f"c{i}" for i in range(30)])
    assert usage_keys(redis_client, ":usage:hll:")  # one per shard touched

    aggregation.drain_usage()

    assert usage_keys(redis_client, ":usage:hll:") == []
    merged = usage_keys(redis_client, "{usage-distinct}")
    assert len(merged) == 3  # minute, hour, day
    for key in merged:
        assert 0 < redis_client.pttl(key) <= 3 * 86400 * 1000


def test_shard_logs_of_the_current_minute_stay_for_the_next_drain(
    make_limiter, redis_client
):
    live = make_limiter(prefix=conf.key_prefix())  # Redis TIME: minute not over
    hit_clients(live, "api", ["a", "b"])
    aggregation.drain_usage()
    assert usage_keys(redis_client, ":usage:hll:")
    hit_clients(live, "api", ["b", "c"])
    aggregation.drain_usage()

    (row,) = UsageMinute.objects.filter(policy="api")
    # A minute boundary may fall between the two drains: then each minute
    # has its own count; within one minute the union is 3.
    assert row.distinct_clients == 3 or UsageMinute.objects.count() == 2


def test_a_shard_log_holding_garbage_is_skipped_and_logged(
    counting, redis_client, caplog
):
    hit_clients(counting, "api", ["a", "b"])
    (key, *_) = usage_keys(redis_client, ":usage:hll:")
    redis_client.set(key, "not a hyperloglog")
    with caplog.at_level(logging.WARNING, logger="ratelimit_app"):
        report = aggregation.drain_usage()

    assert report.skipped >= 1
    assert "were not HLLs" in caplog.text
    row = UsageMinute.objects.get(policy="api")
    assert row.allowed == 2 and row.distinct_clients in (0, 1)


def test_a_merged_key_holding_garbage_is_replaced(counting, redis_client):
    hit_clients(counting, "api", ["a", "b"])
    hour_key = distinct.merged_key(conf.key_prefix(), "hour", START_MINUTE, "api")
    redis_client.set(hour_key, "garbage")
    aggregation.drain_usage()
    assert distinct_of(UsageHour) == {START_MINUTE: 2}


def test_stored_distinct_counts_never_go_down(counting, redis_client):
    hit_clients(counting, "api", ["a", "b", "c"])
    aggregation.drain_usage()
    for key in usage_keys(redis_client, "{usage-distinct}"):
        redis_client.delete(key)  # merged logs expired (a long outage)
    counting.clock.advance(1000)
    hit_clients(counting, "api", ["d"])
    aggregation.drain_usage()
    assert distinct_of(UsageMinute) == {START_MINUTE: 3}  # max(3, 1)


# -- top offenders -----------------------------------------------------------------


def test_offenders_are_counted_per_identity_with_safe_labels(counting):
    clients = ["203.0.113.7"] * 5 + ["user:42"] * 3 + ["secret-api-key"] * 2
    hit_clients(counting, "api", clients, rate="1/h")
    aggregation.drain_usage()

    offenders = offenders_of()
    assert offenders.pop("203.0.113.x") == 4  # first request allowed
    assert offenders.pop("user 42") == 2
    ((hashed, denials),) = offenders.items()
    assert hashed.startswith("#") and denials == 1  # a key value is never shown
    assert "secret" not in "".join(
        UsageOffender.objects.values_list("label", flat=True)
    )


def test_offender_counts_add_up_across_drains_and_minutes(counting, clock):
    hit_clients(counting, "api", ["198.51.100.1"] * 3, rate="1/h")
    aggregation.drain_usage()
    clock.advance(MINUTE_MS)
    hit_clients(counting, "api", ["198.51.100.1"] * 4, rate="1/h")
    aggregation.drain_usage()
    assert offenders_of() == {"198.51.100.x": 6}  # 2 + 4, one hour row
    assert UsageOffender.objects.count() == 1


def test_the_database_keeps_only_the_most_denied_per_policy_and_hour(
    counting, settings
):
    settings.RATELIMIT = {**settings.RATELIMIT, "USAGE_OFFENDERS_KEPT": 2}
    for index, denials in enumerate((5, 1, 3, 2)):
        hit_clients(counting, "api", [f"user:{index}"] * (denials + 1), rate="1/h")
    aggregation.drain_usage()
    assert offenders_of() == {"user 0": 5, "user 2": 3}


def test_the_live_offenders_set_is_bounded_per_shard(
    make_limiter, clock, redis_client, settings
):
    settings.RATELIMIT = {
        **settings.RATELIMIT,
        "SHARDS": 1,
        "USAGE_OFFENDERS_PER_SHARD": 3,
    }
    limiter = make_limiter(clock=clock, prefix=conf.key_prefix(), shards=1)
    hit_clients(limiter, "api", ["user:heavy"] * 11, rate="1/h")
    hit_clients(limiter, "api", [f"user:{i}" for i in range(20)] * 2, rate="1/h")
    (top,) = usage_keys(redis_client, ":usage:top")
    assert redis_client.zcard(top) == 3
    aggregation.drain_usage()
    assert offenders_of()["user heavy"] == 10  # heavy hitters survive the cap
    assert UsageOffender.objects.count() <= 3


def test_garbage_offender_members_are_skipped_and_logged(
    counting, redis_client, caplog
):
    hit_clients(counting, "api", ["user:7"] * 2, rate="1/h")
    (top,) = usage_keys(redis_client, ":usage:top")
    redis_client.zadd(top, {"no-pipes": 3, f"{START_MINUTE}|id||api": 0.5})
    with caplog.at_level(logging.WARNING, logger="ratelimit_app"):
        report = aggregation.drain_usage()
    assert report.skipped == 2
    assert "skipped 2 unreadable offender(s)" in caplog.text
    assert offenders_of() == {"user 7": 1}


def test_peeks_and_allowed_requests_make_no_offenders(counting, redis_client):
    hit_clients(counting, "api", ["a", "b"])
    counting.peek("api", "c", "1/h", algorithm="fixed_window")
    assert usage_keys(redis_client, ":usage:top") == []


# -- labels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "label"),
    [
        ("203.0.113.7", "203.0.113.x"),
        ("ip:198.51.100.250", "198.51.100.x"),
        ("2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("user:42", "user 42"),
        ("user:a|b", "user a?b"),  # "|" separates the member's parts
        ("user:\x00\n", "user ??"),
        ("user:" + "9" * 100, "user " + "9" * 59),
        (MISSING, "(no key value)"),
        (f"ip:{MISSING}", "(no key value)"),
        ("secret-api-key", ""),
        ("10.0.0.0/8", ""),
        (b"\xff", ""),
        (12345, ""),
    ],
)
def test_display_labels_show_nothing_secret(identity, label):
    assert display_label(identity) == label
    assert len(label) <= usage.MAX_LABEL_LENGTH


@pytest.mark.parametrize("name", ["USAGE_OFFENDERS_PER_SHARD", "USAGE_OFFENDERS_KEPT"])
@pytest.mark.parametrize("value", [0, -1, "10", True, 10**7])
def test_bad_offender_settings_are_refused_with_a_clear_message(settings, name, value):
    from django.core.exceptions import ImproperlyConfigured

    settings.RATELIMIT = {**settings.RATELIMIT, name: value}
    getter = (
        usage.offenders_per_shard if name.endswith("SHARD") else usage.offenders_kept
    )
    with pytest.raises(ImproperlyConfigured, match=name):
        getter()


# -- query helpers -----------------------------------------------------------------


def test_stats_distinct_clients_lists_every_period_with_zeros(counting, clock):
    hit_clients(counting, "api", ["a", "b"])
    clock.advance(2 * MINUTE_MS)
    hit_clients(counting, "api", ["b", "c", "d"])
    aggregation.drain_usage()

    since = usage.minute_start(START_MINUTE)
    until = usage.minute_start(START_MINUTE + 4)
    series = stats.distinct_clients("api", "minute", since, until)
    assert [p.clients for p in series] == [2, 0, 3, 0]
    assert [p.start for p in series] == [
        usage.minute_start(START_MINUTE + i) for i in range(4)
    ]
    (hour,) = stats.distinct_clients("api", "hour", since, until)
    assert hour.clients == 4
    assert stats.distinct_clients("other", "minute", since, until)[0].clients == 0


def test_stats_top_offenders_sums_hours_and_ranks(counting, clock):
    hit_clients(counting, "api", ["user:1"] * 3 + ["user:2"] * 5, rate="1/h")
    hit_clients(counting, "login", ["user:1"] * 4, rate="1/h")
    clock.advance(60 * MINUTE_MS)  # next hour: new windows, new rows
    hit_clients(counting, "api", ["user:1"] * 4, rate="1/h")
    aggregation.drain_usage()

    top = stats.top_offenders("api")
    assert [(o.label, o.blocked) for o in top] == [("user 1", 5), ("user 2", 4)]
    assert [(o.label, o.blocked) for o in stats.top_offenders(None, limit=1)] == [
        ("user 1", 8)
    ]
    first_hour = stats.top_offenders(
        "api",
        since=usage.minute_start(START_MINUTE),
        until=usage.minute_start(START_MINUTE + 60),
    )
    assert [(o.label, o.blocked) for o in first_hour] == [("user 2", 4), ("user 1", 2)]


# -- usage groups: one count for a call's scopes --------------------------------------


def hit_together(limiter, scopes, clients, rate="1000/h", cost=1, identity=None):
    """One call per client over every scope (all-or-nothing)."""
    from ratelimit_app.types import Rule

    for client in clients:
        rules = [
            Rule(scope, identity or client, rate, "fixed_window", cost=cost)
            for scope in scopes
        ]
        limiter.hit_many(rules)


def minute_totals(scope: str) -> dict[str, int]:
    """The drained minute rows of a scope, summed (the minutes are long past
    for ``stats.totals``, which reads hours and days there)."""
    rows = UsageMinute.objects.filter(policy=scope)
    return {name: sum(getattr(r, name) for r in rows) for name in usage.COUNTS}


def live_fields(redis_client) -> list[str]:
    return [
        field.decode()
        for key in usage_keys(redis_client, ":usage")
        if redis_client.type(key) == b"hash"
        for field in redis_client.hkeys(key)
    ]


def test_a_call_admitted_for_every_scope_counts_once_for_the_group(
    counting, clock, redis_client
):
    scopes = ["grp-a", "grp-b", "grp-c"]
    hit_together(counting, scopes, [f"c{i}" for i in range(12)] * 2)  # 12 clients
    fields = live_fields(redis_client)
    # Every call wrote one field and one HyperLogLog for the three scopes.
    assert {f.split("|")[1] for f in fields} == {"grp-a\x1fgrp-b\x1fgrp-c"}
    assert {f.rsplit("|", 1)[1] for f in fields} == {"g"}
    assert not usage_keys(redis_client, ":hll:")  # the scopes' own: none
    groups = usage_keys(redis_client, ":hllg:")  # one per shard of a client
    assert {key.split(b"|", 1)[1] for key in groups} == {b"grp-a\x1fgrp-b\x1fgrp-c"}

    aggregation.drain_usage()

    for scope in scopes:
        totals = minute_totals(scope)
        assert (totals["allowed"], totals["cost"], totals["blocked"]) == (24, 24, 0)
        assert distinct_of(UsageMinute, scope) == {START_MINUTE: 12}


def test_groups_and_single_scope_counts_add_up_and_merge_their_clients(
    counting, clock, redis_client
):
    hit_together(counting, ["mix-a", "mix-b"], [f"c{i}" for i in range(10)])
    hit_clients(counting, "mix-a", [f"c{i}" for i in range(5, 20)])  # alone
    # mix-b's limit is 1 an hour: the group's clients come back and are denied
    # by it, so each rule counts on its own (mix-a had room: not counted).
    hit_together(counting, ["mix-a", "mix-b"], ["c0", "c1"], rate="1/h")

    aggregation.drain_usage()

    a, b = minute_totals("mix-a"), minute_totals("mix-b")
    assert (a["allowed"], a["blocked"]) == (25, 2)
    assert (b["allowed"], b["blocked"]) == (10, 2)
    assert distinct_of(UsageMinute, "mix-a") == {START_MINUTE: 20}  # a union
    assert distinct_of(UsageMinute, "mix-b") == {START_MINUTE: 10}


@pytest.mark.parametrize(
    ("scopes", "cost", "shared"),
    [
        (["sep\x1fa", "sep-b"], 1, None),  # a scope holding the separator
        (["cost-a", "cost-b"], 2, None),  # a cost above 1 ("a" and "c" fields)
        (["ids-a", "ids-b"], 1, "per-rule"),  # set below: two identities
    ],
)
def test_calls_that_cannot_be_grouped_count_each_scope_on_its_own(
    counting, redis_client, scopes, cost, shared
):
    from ratelimit_app.types import Rule

    for n in range(3):
        if shared:  # each rule its own identity
            rules = [
                Rule(scope, f"{scope}-{n}", "1000/h", "fixed_window")
                for scope in scopes
            ]
            counting.hit_many(rules)
        else:
            hit_together(counting, scopes, [f"c{n}"], cost=cost)
    written = {f.split("|", 1)[1].rsplit("|", 1)[0] for f in live_fields(redis_client)}
    assert written == set(scopes)

    aggregation.drain_usage()

    for scope in scopes:
        totals = minute_totals(scope)
        assert (totals["allowed"], totals["cost"]) == (3, 3 * cost)
        assert distinct_of(UsageMinute, scope) == {START_MINUTE: 3}


def test_a_group_field_with_an_empty_scope_is_skipped_and_logged(redis_client, caplog):
    live = usage.live_key(conf.key_prefix(), 3)
    redis_client.hset(
        live,
        mapping={
            f"{START_MINUTE}|odd-a\x1f|g": 4,  # an empty scope in the group
            f"{START_MINUTE}|\x1f|g": 4,
            f"{START_MINUTE}|odd-a\x1fodd-b|g": 5,
            # Not a group: one scope that holds the separator.
            f"{START_MINUTE}|odd-a\x1fodd-b|b": 2,
        },
    )
    with caplog.at_level(logging.WARNING, "ratelimit_app"):
        aggregation.drain_usage()
    assert "skipped 2 unreadable field(s)" in caplog.text
    assert minute_totals("odd-a")["allowed"] == 5
    assert minute_totals("odd-b")["allowed"] == 5
    assert minute_totals("odd-a\x1fodd-b")["blocked"] == 2
