"""One state hash per identity: a field per scope and algorithm, one HMGET and
one HSET per call, and a TTL kept by the hash's deadline field."""

from __future__ import annotations

import pytest

from ratelimit_app.keys import DEADLINE_FIELD, OWN_KEY_ALGORITHMS, state_field
from ratelimit_app.types import ALGORITHMS, Rule

RATE = "5/10s"
HASHED = [a for a in ALGORITHMS if a not in OWN_KEY_ALGORITHMS]


def command_calls(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}


def test_the_rules_of_one_identity_share_one_state_hash(make_limiter, redis_client):
    limiter = make_limiter()
    rules = [Rule(f"policy-{n}", "client", RATE, a) for n, a in enumerate(HASHED)]
    keys = limiter.keys_for(rules)
    assert len(set(keys)) == 1 and keys[0].endswith(":state")
    limiter.hit_many(rules)
    fields = {f.decode() for f in redis_client.hkeys(keys[0])}
    expected = {state_field(rule.scope, rule.algorithm) for rule in rules}
    assert fields == expected | {DEADLINE_FIELD}


def test_three_policies_cost_one_hmget_and_one_hset(make_limiter, private_redis):
    """Besides TIME and the usage counters: no GET or SET per rule, and no
    PEXPIRE while the hash's deadline covers every state."""
    limiter = make_limiter(client=private_redis)
    # Fixed windows: their states are needed until the window's end, which
    # the first call's deadline covers (a GCRA's debt would outgrow it).
    rules = [Rule(f"three-{n}", "client", "1000/h", "fixed_window") for n in range(3)]
    limiter.hit_many(rules)  # the first call creates the hash and sets its TTL
    before = command_calls(private_redis)
    limiter.hit_many(rules)
    after = command_calls(private_redis)
    calls = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    calls.pop("info", None)
    script = {"fcall": 1} if "fcall" in calls else {"evalsha": 1}
    assert calls == {
        **script,
        "time": 1,
        "hmget": 1,
        "hset": 1,
        "hincrby": 1,
        "pfadd": 1,
    }


@pytest.mark.parametrize("algorithm", HASHED)
def test_a_stale_field_in_a_living_hash_reads_as_a_fresh_client(
    limiter, clock, algorithm
):
    """A short policy's state outlives its need while a long policy keeps the
    hash alive: each state holds its own times, so it reads as full again."""
    limiter.hit("long", "client", "1/d", algorithm="gcra")
    for _ in range(3):
        limiter.hit("short", "client", "3/s", algorithm=algorithm)
    assert not limiter.hit("short", "client", "3/s", algorithm=algorithm).allowed
    clock.advance(5000)  # every short state is full again
    decision = limiter.hit("short", "client", "3/s", algorithm=algorithm)
    assert decision.allowed and decision.remaining == 2


def test_the_deadline_is_extended_only_when_a_state_needs_longer(
    limiter, clock, redis_client
):
    rule = Rule("steady", "client", "10/10s", "gcra")
    key = limiter.keys_for([rule])[0]
    limiter.hit_many([rule])  # needs 1 s (one cell): deadline now + 1 s + 1 s
    first = int(redis_client.hget(key, DEADLINE_FIELD))
    assert first == clock() + 2000
    clock.advance(500)
    limiter.hit_many([rule])  # needs until now + 1.5 s: within the deadline
    assert int(redis_client.hget(key, DEADLINE_FIELD)) == first
    for _ in range(5):
        limiter.hit_many([rule])  # the debt grows to 6.5 s: past the deadline
    needed = clock() + 6500
    assert int(redis_client.hget(key, DEADLINE_FIELD)) == needed + 1625


def test_a_garbled_deadline_is_rewritten(make_limiter, redis_client):
    limiter = make_limiter()
    rule = Rule("garbled", "client", RATE, "fixed_window")
    key = limiter.keys_for([rule])[0]
    redis_client.hset(key, DEADLINE_FIELD, "not a time")
    assert limiter.hit_many([rule])[0].remaining == 4
    assert int(redis_client.hget(key, DEADLINE_FIELD)) > 0
    assert 0 < redis_client.pttl(key) <= 10_000 + 2_500


def test_a_reset_leaves_the_identitys_other_policies(limiter):
    for scope in ("kept", "reset"):
        for algorithm in ALGORITHMS:
            limiter.hit(scope, "client", RATE, algorithm=algorithm, cost=2)
    limiter.reset("reset", "client")
    for algorithm in ALGORITHMS:
        assert limiter.peek("reset", "client", RATE, algorithm=algorithm).remaining == 5
        assert limiter.peek("kept", "client", RATE, algorithm=algorithm).remaining == 3


@pytest.mark.parametrize("algorithm", HASHED)
@pytest.mark.parametrize("rules", [1, 2], ids=["one-rule", "driver"])
def test_a_garbled_state_reads_as_a_fresh_client(
    make_limiter, redis_client, algorithm, rules
):
    limiter = make_limiter()
    rule = Rule("garbled-state", "client", RATE, algorithm)
    other = Rule("other", "client", RATE, "gcra")
    key = limiter.keys_for([rule])[0]
    redis_client.hset(key, state_field(rule.scope, algorithm), "12:not-a-state")
    decisions = limiter.hit_many([rule, other][:rules])
    assert decisions[0].allowed and decisions[0].remaining == 4
    assert (
        redis_client.hget(key, state_field(rule.scope, algorithm)) != b"12:not-a-state"
    )


@pytest.mark.parametrize("rules", [1, 2], ids=["one-rule", "driver"])
def test_a_state_key_of_another_type_is_replaced(make_limiter, redis_client, rules):
    """Something else wrote a string where the state hash goes: the client is
    decided as a fresh one (never an error on each call) and the key becomes
    its state hash again."""
    limiter = make_limiter()
    chosen = [Rule("typed", "client", RATE, "gcra"), Rule("other", "client", RATE)]
    key = limiter.keys_for(chosen[:1])[0]
    redis_client.set(key, "not a hash")
    decisions = limiter.hit_many(chosen[:rules])
    assert [d.remaining for d in decisions] == [4] * rules
    assert all(d.reason == "ok" for d in decisions)
    assert redis_client.type(key) == b"hash"
    assert limiter.hit_many(chosen[:rules])[0].remaining == 3


def test_a_reset_replaces_a_state_key_of_another_type(limiter, redis_client):
    key = limiter.state_hash("client")
    redis_client.set(key, "not a hash")
    limiter.reset("typed", "client")
    assert not redis_client.exists(key)
    assert limiter.hit("typed", "client", RATE).remaining == 4


@pytest.mark.django_db
def test_a_policy_reset_skips_a_state_key_of_another_type(redis_client):
    from ratelimit_app import actions, limiter

    engine = limiter.default_limiter()
    engine.hit("skipped", "one", RATE, cost=2)
    stray = engine.state_hash("two")
    redis_client.set(stray, "not a hash")
    assert actions.delete_counters("skipped") == 1
    assert redis_client.get(stray) == b"not a hash"
    assert engine.peek("skipped", "one", RATE).remaining == 5
