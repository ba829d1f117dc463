"""Each algorithm's decisions, driven by a manual clock against real Redis."""

from __future__ import annotations

import time

import pytest

from ratelimit_app.types import ALGORITHMS, WINDOW_ALGORITHMS

BUCKETS = sorted(set(ALGORITHMS) - WINDOW_ALGORITHMS)
RATE = "5/10s"  # one unit every 2 s for the buckets; windows of 10 s


def hits(limiter, algorithm, n, rate=RATE, **kwargs):
    return [
        limiter.hit("scope", "client", rate, algorithm=algorithm, **kwargs)
        for _ in range(n)
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_admits_exactly_the_limit_then_blocks(limiter, algorithm):
    decisions = hits(limiter, algorithm, 7)
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert {d.limit for d in decisions} == {5}
    assert [d.reason for d in decisions] == ["ok"] * 5 + ["limit"] * 2
    assert all(d.retry_after == 0 for d in decisions[:5])


# After 5 hits at a window start t0: (retry_after, reset_after) in seconds at
# t0 and 1 s later. Buckets refill one unit per 2 s; the counter's previous
# window weighs until 1/5 of the next window has passed.
EXPECTED_AFTER_EXHAUSTION = {
    "fixed_window": ((10.0, 10.0), (9.0, 9.0)),
    "sliding_window_log": ((10.0, 10.0), (9.0, 9.0)),
    "sliding_window_counter": ((12.0, 20.0), (11.0, 19.0)),
    "token_bucket": ((2.0, 10.0), (1.0, 9.0)),
    "leaky_bucket": ((2.0, 10.0), (1.0, 9.0)),
    "gcra": ((2.0, 10.0), (1.0, 9.0)),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_retry_after_and_reset_after_are_exact(limiter, clock, algorithm):
    hits(limiter, algorithm, 5)
    for expected in EXPECTED_AFTER_EXHAUSTION[algorithm]:
        denied = limiter.hit("scope", "client", RATE, algorithm=algorithm)
        assert (denied.retry_after, denied.reset_after) == expected
        clock.advance(1000)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_waiting_retry_after_admits_and_a_millisecond_less_does_not(
    limiter, clock, algorithm
):
    hits(limiter, algorithm, 5)
    retry_ms = round(hits(limiter, algorithm, 1)[0].retry_after * 1000)
    clock.advance(retry_ms - 1)
    assert not limiter.peek("scope", "client", RATE, algorithm=algorithm).allowed
    clock.advance(1)
    assert hits(limiter, algorithm, 1)[0].allowed


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_refills_at_the_rate(limiter, clock, algorithm):
    hits(limiter, algorithm, 10, rate="10/s")
    clock.advance(300)
    decisions = hits(limiter, algorithm, 4, rate="10/s")
    assert [d.allowed for d in decisions] == [True, True, True, False]
    clock.advance(1000)
    assert limiter.peek("scope", "client", "10/s", algorithm=algorithm).remaining == 10


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_burst_sets_the_capacity(limiter, clock, algorithm):
    decisions = hits(limiter, algorithm, 6, rate="1/s", burst=5)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[0].limit == 5
    assert decisions[-1].retry_after == 1.0
    clock.advance(1000)
    assert [d.allowed for d in hits(limiter, algorithm, 2, rate="1/s", burst=5)] == [
        True,
        False,
    ]


@pytest.mark.parametrize("algorithm", sorted(WINDOW_ALGORITHMS))
def test_window_algorithms_refuse_a_burst_other_than_the_limit(limiter, algorithm):
    with pytest.raises(ValueError, match="burst applies to"):
        hits(limiter, algorithm, 1, burst=6)
    assert hits(limiter, algorithm, 1, burst=5)[0].allowed


def test_fixed_window_resets_at_the_window_edge(limiter, clock):
    clock.advance(9_999)
    assert all(d.allowed for d in hits(limiter, "fixed_window", 5))
    assert not hits(limiter, "fixed_window", 1)[0].allowed
    clock.advance(1)  # next aligned window: the burst at the edge is allowed
    assert [d.allowed for d in hits(limiter, "fixed_window", 6)] == [True] * 5 + [False]


def test_sliding_log_counts_the_last_period_exactly(limiter, clock):
    for _ in range(5):
        hits(limiter, "sliding_window_log", 1)
        clock.advance(1_000)
    clock.advance(4_999)  # the first hit is 9.999 s old: still counted
    assert not hits(limiter, "sliding_window_log", 1)[0].allowed
    clock.advance(1)  # now 10 s old: it leaves the window
    assert [d.allowed for d in hits(limiter, "sliding_window_log", 2)] == [True, False]


def test_sliding_counter_weighs_the_previous_window(limiter, clock):
    hits(limiter, "sliding_window_counter", 5)
    clock.advance(10_000 + 6_000)  # previous window weighs 40 %: 2 units
    decisions = hits(limiter, "sliding_window_counter", 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    clock.advance(20_000)  # two windows later nothing weighs
    assert limiter.peek("scope", "client", RATE, algorithm="sliding_window_counter")
    assert (
        limiter.peek(
            "scope", "client", RATE, algorithm="sliding_window_counter"
        ).remaining
        == 5
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_consumes_that_many_units(limiter, algorithm):
    first, second, third = (
        hits(limiter, algorithm, 1, cost=3)[0],
        hits(limiter, algorithm, 1, cost=3)[0],
        hits(limiter, algorithm, 1, cost=2)[0],
    )
    assert (first.allowed, first.remaining) == (True, 2)
    assert (second.allowed, second.remaining, second.reason) == (False, 2, "limit")
    assert (third.allowed, third.remaining) == (True, 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_above_capacity_is_never_admitted(limiter, clock, algorithm):
    decision = hits(limiter, algorithm, 1, cost=6)[0]
    assert not decision.allowed
    assert decision.reason == "cost_exceeds_capacity"
    assert decision.retry_after is None
    clock.advance(10**9)
    assert hits(limiter, algorithm, 1, cost=6)[0].retry_after is None
    assert hits(limiter, algorithm, 1)[0].remaining == 4  # nothing was consumed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_consumes_nothing(limiter, algorithm):
    hits(limiter, algorithm, 2)
    for _ in range(3):
        peeked = limiter.peek("scope", "client", RATE, algorithm=algorithm)
        assert (peeked.allowed, peeked.remaining) == (True, 3)
    assert hits(limiter, algorithm, 1)[0].remaining == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reset_forgets_the_state(limiter, algorithm):
    hits(limiter, algorithm, 6)
    limiter.reset("scope", "client")
    assert hits(limiter, algorithm, 1)[0].remaining == 4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_scopes_and_identities_are_independent(limiter, algorithm):
    hits(limiter, algorithm, 5)
    other_scope = limiter.hit("other", "client", RATE, algorithm=algorithm)
    other_client = limiter.hit("scope", "other", RATE, algorithm=algorithm)
    assert other_scope.remaining == other_client.remaining == 4


# Lowering 10/10s to 4/10s after 3 units: the state carries over in each
# algorithm's own terms (used units, available tokens, or GCRA's time debt).
LOWERED_RATE_REMAINING = {
    "fixed_window": 0,
    "sliding_window_log": 0,
    "sliding_window_counter": 0,
    "token_bucket": 3,  # 7 tokens left, capped at the new capacity of 4
    "leaky_bucket": 0,
    "gcra": 1,  # 3 s of debt at the new 2.5 s per unit
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_edited_rate_applies_to_the_current_state(limiter, algorithm):
    hits(limiter, algorithm, 3, rate="10/10s")
    decision = limiter.hit("scope", "client", "4/10s", algorithm=algorithm)
    assert (decision.allowed, decision.remaining) == (
        True,
        LOWERED_RATE_REMAINING[algorithm],
    )


@pytest.mark.parametrize("algorithm", BUCKETS)
def test_real_redis_clock_gives_retry_after_within_10_ms(make_limiter, algorithm):
    limiter = make_limiter()  # no manual clock: Redis TIME
    started = time.monotonic()
    decisions = hits(limiter, algorithm, 6)
    # Tokens refill while the six calls run: at most `elapsed` of refill.
    elapsed = time.monotonic() - started
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    denied = decisions[-1]
    assert 2.0 - elapsed - 0.010 <= denied.retry_after <= 2.0 + 0.010
    assert 10.0 - elapsed - 0.010 <= denied.reset_after <= 10.0 + 0.010


# -- the one-rule script against the general driver ---------------------------


def _run(limiter, redis_client, rule, mode, kind):
    from ratelimit_app import limiter as limiter_module
    from ratelimit_app.algorithms import script_for
    from ratelimit_app.backends.redis import run_script

    script, keys, args = limiter.pack(limiter_module._items([rule]), mode)
    script = script_for(frozenset((rule.algorithm,)), kind)
    if kind == "driver":  # the driver's ARGV has a usage group after the header
        args.insert(4, "")
    return run_script(redis_client, script, keys, args), keys


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_one_rule_script_decides_and_counts_as_the_driver(
    limiter, clock, redis_client, algorithm
):
    """The same steps under two scopes, one through single.lua and one
    through driver.lua: the same replies, states and usage counts."""
    from ratelimit_app import usage
    from ratelimit_app.types import Rule

    steps = [
        ("hit", 1, False),
        ("peek", 1, False),
        ("hit", 2, False),
        ("hit", 9, False),  # more than the capacity
        ("hit", 1, True),  # shadow
        ("hit", 1, False),
        ("hit", 1, False),  # denied
        ("peek", 1, False),
        ("hit", 1, True),  # shadow, would be denied
    ]
    replies, states = {"single": [], "driver": []}, {}
    for mode, cost, shadow in steps:
        for kind in replies:
            rule = Rule(kind, "client", "4/m", algorithm, cost=cost, shadow=shadow)
            reply, keys = _run(limiter, redis_client, rule, mode, kind)
            replies[kind].append(reply)
            states[kind] = _state(redis_client, keys[0], kind, algorithm)
        clock.advance(7)
    assert replies["single"] == replies["driver"]
    assert states["single"] == states["driver"]
    live = usage.live_key_of(keys[0])  # one identity: one shard for both scopes
    counts = {"single": {}, "driver": {}}
    for field, value in redis_client.hgetall(live).items():
        _, scope, metric = field.decode().split("|")
        counts[scope][metric] = int(value)
    assert counts["single"] == counts["driver"]
    assert counts["single"]["b"] >= 1 and counts["single"]["s"] >= 1


def _state(redis_client, key, scope, algorithm):
    """A rule's state: its own sorted set, or its field of the state hash."""
    from ratelimit_app.keys import state_field

    if redis_client.type(key) == b"zset":
        return redis_client.zrange(key, 0, -1, withscores=True)
    return redis_client.hget(key, state_field(scope, algorithm))
