"""Token leasing: the script's lease mode, give-backs, and the process's leases."""

from __future__ import annotations

import itertools
import os

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from ratelimit_app import (
    aggregation,
    conf,
    deny_cache,
    leases,
    limiter,
    local_usage,
    usage,
)
from ratelimit_app.algorithms import script_for
from ratelimit_app.backends.redis import run_script
from ratelimit_app.models import UsageMinute
from ratelimit_app.types import Rule

LEASED = ("fixed_window", "token_bucket", "gcra")


@pytest.fixture(autouse=True)
def fresh_leases():
    leases.table.clear()
    deny_cache.cache.clear()
    yield
    local_usage.buffer.flush()
    leases.table.clear()
    deny_cache.cache.clear()


def leased(algorithm, rate="10/m", identity="client", scope="s", **kwargs):
    return Rule(scope, identity, rate, algorithm=algorithm, lease=True, **kwargs)


def grant(engine, rule, want):
    """One "lease"-mode script call: (allowed, status, remaining, granted, mark)."""
    script, keys, args = engine.pack(limiter._items([rule]), "lease", [want])
    reply = run_script(engine.client, script, keys, args)
    return reply[0], reply[1], reply[2], reply[5], reply[6]


def give_back(engine, rule, units, mark):
    spec = limiter._items([rule])[0][0]
    key = engine.keys_for([rule])[0]
    algorithm, limit, period, capacity = spec.argv[:4]
    script = script_for(frozenset((algorithm,)), "give_back")
    field = spec.field  # the rule's field in the state hash
    args = [engine._now(), algorithm, limit, period, capacity, units, mark, field]
    return run_script(engine.client, script, [key], args)


def remaining(engine, rule):
    plain = Rule(rule.scope, rule.identity, rule.rate, algorithm=rule.algorithm)
    return engine.peek_many([plain])[0].remaining


# -- the script's lease mode -----------------------------------------------------


@pytest.mark.parametrize("algorithm", LEASED)
def test_lease_mode_grants_up_to_the_units_wanted_and_what_is_left(limiter_, algorithm):
    rule = leased(algorithm)
    assert grant(limiter_, rule, 4)[:4] == (1, 0, 6, 4)
    assert grant(limiter_, rule, 10)[:4] == (1, 0, 0, 6)  # only 6 were left
    allowed, status, _, granted, _ = grant(limiter_, rule, 10)
    assert (allowed, status, granted) == (0, 1, 0)


@pytest.mark.parametrize("algorithm", LEASED)
def test_a_grant_counts_the_request_not_the_units_leased(
    limiter_, redis_client, algorithm
):
    rule = leased(algorithm, cost=2)
    grant(limiter_, rule, 6)
    live = usage.live_key_of(limiter_.keys_for([rule])[0])
    fields = {
        k.decode().rsplit("|", 1)[1]: int(v)
        for k, v in redis_client.hgetall(live).items()
    }
    assert fields == {"a": 1, "c": 2}


def test_a_fixed_window_takes_unused_units_back_in_its_own_window_only(limiter_, clock):
    rule = leased("fixed_window", "10/m")
    *_, granted, mark = grant(limiter_, rule, 5)
    assert granted == 5 and remaining(limiter_, rule) == 5
    assert give_back(limiter_, rule, 3, mark) == 3
    assert remaining(limiter_, rule) == 8
    *_, mark = grant(limiter_, rule, 4)
    clock.advance(60_000)  # the next window: too late to give back
    assert give_back(limiter_, rule, 3, mark) == 0
    assert remaining(limiter_, rule) == 10


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_a_bucket_takes_back_only_the_part_of_the_lease_still_ahead(
    limiter_, clock, algorithm
):
    rule = leased(algorithm, "10/s")  # one unit per 100 ms
    *_, granted, mark = grant(limiter_, rule, 5)
    assert granted == 5
    assert give_back(limiter_, rule, 5, mark) == 5  # at once: all of it
    assert remaining(limiter_, rule) == 10
    *_, mark = grant(limiter_, rule, 5)
    clock.advance(300)  # 3 of the 5 units have refilled already
    assert give_back(limiter_, rule, 5, mark) == 2
    assert remaining(limiter_, rule) == 10
    *_, mark = grant(limiter_, rule, 5)
    clock.advance(600)  # the whole lease has refilled: nothing to take back
    assert give_back(limiter_, rule, 5, mark) == 0
    assert remaining(limiter_, rule) == 10


@pytest.mark.parametrize("algorithm", ["gcra", "token_bucket"])
def test_a_give_back_is_never_more_generous_than_not_leasing(
    limiter_, clock, algorithm
):
    """Lease 6 of 10, use 2, another client spends the rest, give 4 back:
    exactly the 4 unused units come back, not the refill on top."""
    rule = leased(algorithm, "10/s")
    *_, mark = grant(limiter_, rule, 6)
    plain = Rule("s", "client", "10/s", algorithm=algorithm)
    assert sum(limiter_.hit_many([plain])[0].allowed for _ in range(6)) == 4
    clock.advance(100)  # one unit refills
    assert give_back(limiter_, rule, 4, mark) == 4
    assert remaining(limiter_, rule) == 5  # 1 refilled + 4 given back


def test_lease_mode_needs_the_cost_at_least(limiter_):
    rule = leased("gcra", "10/m", cost=3)
    assert grant(limiter_, rule, 1)[3] == 3  # wanting less still takes the cost


# -- the process's leases ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", LEASED)
def test_a_leased_rule_admits_exactly_the_limit_with_few_redis_calls(
    make_limiter, calls, algorithm
):
    engine = make_limiter()
    rule = leased(algorithm, "1000/h")
    admitted = sum(engine.hit_many([rule])[0].allowed for _ in range(1200))
    assert admitted == 1000
    assert len(calls) < 60  # k doubles up to 50 (5% of 1000)


def test_the_first_request_asks_for_its_cost_then_k_doubles_up_to_the_share(
    make_limiter, settings
):
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_SHARE": 0.01}
    engine = make_limiter()
    rule = leased("gcra", "100000/h")  # at most 1000 per lease
    wanted = []
    for _ in range(3000):
        engine.hit_many([rule])
        (lease,) = leases.table._leases.values()
        if not wanted or lease.wanted != wanted[-1]:
            wanted.append(lease.wanted)
    assert wanted[:4] == [1, 2, 4, 8]
    assert max(wanted) == 1000
    assert all(b <= 2 * a for a, b in itertools.pairwise(wanted))


def test_a_quiet_key_stays_an_exact_call_per_request(make_limiter, calls, settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_SECONDS": 0.002}
    engine = make_limiter()
    rule = leased("gcra", "1000/h")
    for _ in range(5):
        engine.hit_many([rule])
        local_usage.time.sleep(0.01)  # slower than a lease lives
    assert len(calls) == 5
    assert leases.table.units_held() <= 2


def test_a_lease_ends_after_lease_max_seconds(make_limiter, calls, settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_SECONDS": 0.05}
    engine = make_limiter()
    rule = leased("fixed_window", "1000/h")
    for _ in range(40):
        engine.hit_many([rule])
    sent = len(calls)
    assert leases.table.units_held() > 0
    local_usage.time.sleep(0.06)
    engine.hit_many([rule])
    assert len(calls) == sent + 1


@pytest.mark.parametrize("algorithm", LEASED)
def test_units_of_ended_leases_are_given_back(make_limiter, algorithm):
    engine = make_limiter()
    rule = leased(algorithm, "1000/h")
    admitted = sum(engine.hit_many([rule])[0].allowed for _ in range(40))
    held = leases.table.units_held()
    assert held > 0
    assert remaining(engine, rule) == 1000 - admitted - held
    assert leases.table.end_all() == held
    assert remaining(engine, rule) == 1000 - admitted


@pytest.mark.django_db
def test_units_go_back_to_the_redis_that_granted_them(settings):
    """A limiter built from settings resolves its client anew; a lease keeps
    the one that granted it, so REDIS_URL changing meanwhile (tests do it)
    sends nothing to the new server."""
    from ratelimit_app.testing import RedisServer

    engine = limiter.default_limiter()
    rule = leased("gcra", "1000/h", scope="granted-here")
    admitted = sum(engine.hit_many([rule])[0].allowed for _ in range(40))
    held = leases.table.units_held()
    assert held > 0
    granted_by = settings.RATELIMIT
    other = RedisServer().start()
    try:
        settings.RATELIMIT = {**granted_by, "REDIS_URL": other.url}
        assert leases.table.end_all() == held
        calls = redis.Redis.from_url(other.url).info("commandstats")
    finally:
        other.stop()
    assert not any("fcall" in name or "evalsha" in name for name in calls)
    settings.RATELIMIT = granted_by
    assert remaining(limiter.default_limiter(), rule) == 1000 - admitted


def test_the_background_thread_gives_back_what_an_idle_lease_holds(
    make_limiter, settings
):
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_SECONDS": 0.05}
    engine = make_limiter()
    rule = leased("fixed_window", "1000/h")
    admitted = sum(engine.hit_many([rule])[0].allowed for _ in range(40))
    assert leases.table.units_held() > 0
    local_usage.time.sleep(0.06)
    local_usage.buffer.run()  # one round of the flusher thread
    assert leases.table.units_held() == 0
    assert remaining(engine, rule) == 1000 - admitted


def test_all_or_nothing_puts_taken_units_back_when_another_rule_blocks(make_limiter):
    engine = make_limiter()
    rule = leased("gcra", "1000/h")
    for _ in range(40):
        engine.hit_many([rule])
    held = leases.table.units_held()
    assert held > 0
    spent = Rule("other", "client", "1/h")
    assert engine.hit_many([spent])[0].allowed
    first, second = engine.hit_many([rule, spent])
    assert first.reason == "not_consumed" and second.reason == "limit"
    assert leases.table.units_held() == held


def test_a_leased_rule_beside_an_ordinary_one_takes_from_its_lease(make_limiter, calls):
    engine = make_limiter()
    rule, other = leased("gcra", "1000/h"), Rule("other", "client", "1000/h")
    for _ in range(40):
        engine.hit_many([rule])
    held, sent = leases.table.units_held(), len(calls)
    first, second = engine.hit_many([rule, other])
    assert first.allowed and second.allowed
    assert len(calls) == sent + 1  # only the ordinary rule asked Redis
    assert leases.table.units_held() == held - 1


def test_a_local_decision_reports_what_redis_left_plus_the_lease(make_limiter):
    engine = make_limiter()
    rule = leased("fixed_window", "1000/h")
    decisions = [engine.hit_many([rule])[0] for _ in range(40)]
    assert [d.remaining for d in decisions] == list(range(999, 959, -1))
    assert all(d.allowed and d.reason == "ok" for d in decisions)


async def test_the_async_twin_takes_from_the_same_leases(calls):
    engine = limiter.default_limiter()
    rule = leased("gcra", "1000/h")
    decisions = [(await engine.ahit_many([rule]))[0] for _ in range(100)]
    assert all(d.allowed for d in decisions)
    assert len(calls) < 15
    assert leases.table.units_held() > 0


@pytest.mark.django_db
def test_stats_stay_exact_with_leasing_and_the_deny_cache(calls):
    rule = leased("gcra", "200/h", identity="stats-client", scope="leased-stats")
    engine = limiter.default_limiter()
    assert engine.deny is not None
    decisions = [engine.hit_many([rule])[0] for _ in range(300)]
    assert sum(d.allowed for d in decisions) == 200
    # Most admissions came from leases and most denials from the deny cache.
    assert len(calls) < 30
    leases.table.end_all()
    aggregation.drain_usage()
    rows = UsageMinute.objects.filter(policy="leased-stats")
    assert sum(r.allowed for r in rows) == 200
    assert sum(r.blocked for r in rows) == 100
    assert sum(r.cost for r in rows) == 200


@pytest.mark.django_db
def test_admissions_a_lease_counts_itself_reach_the_stats_across_grants(settings):
    """Leases count their own admissions (per 100 ms bucket); the counts of
    a lease replaced by a new grant or pushed out of the table still arrive."""
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_KEYS": 1}
    engine = limiter.default_limiter()
    rules = [
        leased("gcra", "100000/h", identity=f"c{n}", scope="self-counted")
        for n in range(2)
    ]
    for round_ in range(6):
        for n in range(150):
            assert engine.hit_many([rules[n % 2 if round_ % 2 else 0]])[0].allowed
        local_usage.time.sleep(0.11)  # the next round counts in a new bucket
    assert leases.table.end_all() >= 0
    aggregation.drain_usage()
    rows = UsageMinute.objects.filter(policy="self-counted")
    assert sum(r.allowed for r in rows) == 900
    assert sum(r.cost for r in rows) == 900


def test_a_forked_child_starts_without_the_parents_leases(make_limiter):
    engine = make_limiter()
    rule = leased("gcra", "1000/h")
    for _ in range(40):
        engine.hit_many([rule])
    assert len(leases.table) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it holds, then leave at once
        os.write(write, f"{len(leases.table)} {leases.table.units_held()}".encode())
        os._exit(0)
    os.close(write)
    reported = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert reported == "0 0"
    assert leases.table.units_held() > 0  # the parent keeps its own


# -- validation ----------------------------------------------------------------------


def test_lease_applies_to_three_algorithms_and_never_to_shadow_rules():
    with pytest.raises(ValueError, match="lease applies to fixed_window, gcra"):
        Rule("s", "x", "5/m", algorithm="leaky_bucket", lease=True)
    with pytest.raises(ValueError, match="shadow rule cannot lease"):
        Rule("s", "x", "5/m", shadow=True, lease=True)
    with pytest.raises(TypeError, match="lease must be True or False"):
        Rule("s", "x", "5/m", lease="yes")


@pytest.mark.parametrize(
    ("name", "value"),
    [("LEASE_MAX_SHARE", 1.5), ("LEASE_MAX_SHARE", 0), ("LEASE_MAX_SECONDS", -1)],
)
def test_bad_lease_settings_say_what_to_use(settings, name, value):
    settings.RATELIMIT = {**settings.RATELIMIT, name: value}
    with pytest.raises(ImproperlyConfigured, match=f"RATELIMIT\\['{name}'\\]"):
        conf.failure_settings()


@pytest.fixture
def limiter_(limiter):
    """The manual-clock limiter of conftest (named apart from the module)."""
    return limiter


def test_a_leased_denial_is_answered_locally_for_lease_max_seconds_at_most(
    make_limiter, calls, settings
):
    """Other processes give unused units back within a lease's life, so a
    cached denial of a leased rule must ask Redis again by then; it still
    reports the real retry_after meanwhile."""
    settings.RATELIMIT = {
        **settings.RATELIMIT,
        "DENY_CACHE": True,
        # Long enough that a loaded machine answers the next call in time.
        "LEASE_MAX_SECONDS": 0.5,
    }
    engine = make_limiter()
    engine.deny.observe(engine.epoch_key, None, local_usage.now_ms())
    rule = leased("fixed_window", "2/h")
    assert [engine.hit_many([rule])[0].allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    sent = len(calls)
    local = engine.hit_many([rule])[0]
    assert len(calls) == sent and local.retry_after > 60  # the real wait
    local_usage.time.sleep(0.51)
    engine.hit_many([rule])
    assert len(calls) == sent + 1


# -- when Redis fails ------------------------------------------------------------------


def test_a_held_lease_keeps_admitting_while_redis_is_down_then_the_fail_mode_decides(
    make_limiter,
):
    """Leased units were consumed in Redis already: they stay good while it is
    unreachable; once they run out, the fail mode ("closed" here) answers."""
    from ratelimit_app.backends.topology import client_from_url
    from ratelimit_app.testing import RedisServer

    server = RedisServer().start()
    try:
        client = client_from_url(server.url, socket_timeout=0.2)
        engine = make_limiter(client=client)
        rule = leased("gcra", "1000/h")
        for _ in range(40):
            assert engine.hit_many([rule], fail_mode="closed")[0].allowed
        held = leases.table.units_held()
        assert held > 0
    finally:
        server.stop()
    during = [engine.hit_many([rule], fail_mode="closed")[0] for _ in range(held + 3)]
    assert all(d.allowed and d.reason == "ok" for d in during[:held])
    assert [d.reason for d in during[held:]] == ["fallback_closed"] * 3
    local_usage.buffer.clear()  # counts for the stopped server: nowhere to go


def test_the_usage_buffer_drops_counts_beyond_its_cap_and_says_so(
    make_limiter, key_prefix, monkeypatch, caplog
):
    monkeypatch.setattr(local_usage, "MAX_ROWS", 3)
    engine = make_limiter()
    # A buffer of its own, without the flusher thread: the process's buffer
    # may be written by its thread (it flushes every second) meanwhile.
    buffer = local_usage.UsageBuffer()
    monkeypatch.setattr(buffer, "start", lambda: None)
    for n in range(5):
        key = f"{key_prefix}{{s1}}:d{n}:s:g"
        buffer.add(engine, key, "s", "b", 1, "")
    assert buffer.flush() == 3
    assert "2 local usage counts dropped" in caplog.text


def test_after_an_idle_spell_k_starts_from_the_current_rate(make_limiter, settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "LEASE_MAX_SECONDS": 0.05}
    engine = make_limiter()
    rule = leased("gcra", "100000/h")
    for _ in range(2000):
        engine.hit_many([rule])
    (lease,) = leases.table._leases.values()
    assert lease.wanted >= 16
    local_usage.time.sleep(0.3)  # idle for six lease lives
    engine.hit_many([rule])  # the old lease ended: a new grant, sized afresh
    (lease,) = leases.table._leases.values()
    assert lease.wanted == 1  # the cost: slow start again
