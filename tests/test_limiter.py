"""The limiter API: all-or-nothing, shadow rules, keys, TTLs, NOSCRIPT, async."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from django.test import override_settings

from ratelimit_app import limiter as limiter_module
from ratelimit_app import usage
from ratelimit_app.keys import OWN_KEY_ALGORITHMS
from ratelimit_app.testing import RedisServer
from ratelimit_app.types import ALGORITHMS, Rule
from tests.conftest import forget_scripts

RATE = "5/10s"


def exhaust(limiter, scope, identity="client", rate=RATE, algorithm="gcra"):
    while limiter.hit(scope, identity, rate, algorithm=algorithm).allowed:
        pass


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_blocked_call_consumes_from_no_rule(limiter, algorithm):
    exhaust(limiter, "second", algorithm=algorithm)
    rules = [
        Rule("first", "client", RATE, algorithm),
        Rule("second", "client", RATE, algorithm),
    ]
    first, second = limiter.hit_many(rules)
    assert (first.allowed, first.reason, first.remaining) == (
        True,
        "not_consumed",
        5,
    )
    assert (second.allowed, second.reason) == (False, "limit")
    assert limiter.peek("first", "client", RATE, algorithm=algorithm).remaining == 5


def test_an_allowed_call_consumes_from_every_rule(limiter):
    rules = [
        Rule("a", "client", RATE, "fixed_window", cost=2),
        Rule("b", "client", "3/s", "token_bucket"),
        Rule("c", "other-identity", "9/m", "sliding_window_log", cost=3),
    ]
    decisions = limiter.hit_many(rules)
    assert [(d.allowed, d.remaining, d.scope) for d in decisions] == [
        (True, 3, "a"),
        (True, 2, "b"),
        (True, 6, "c"),
    ]


def test_shadow_rules_report_but_never_block(limiter):
    exhaust(limiter, "shadowed")
    enforced, shadow = limiter.hit_many(
        [
            Rule("enforced", "client", RATE),
            Rule("shadowed", "client", RATE, shadow=True),
        ]
    )
    assert enforced.allowed and enforced.remaining == 4
    assert (shadow.allowed, shadow.shadow, shadow.blocking) == (False, True, False)


def test_shadow_rules_consume_nothing_when_an_enforcing_rule_blocks(limiter):
    exhaust(limiter, "enforced")
    enforced, shadow = limiter.hit_many(
        [
            Rule("enforced", "client", RATE),
            Rule("shadowed", "client", RATE, shadow=True),
        ]
    )
    assert enforced.blocking
    assert (shadow.allowed, shadow.reason) == (True, "not_consumed")
    assert limiter.peek("shadowed", "client", RATE).remaining == 5


def test_shadow_rules_consume_when_the_call_passes(limiter):
    limiter.hit_many([Rule("shadowed", "client", RATE, shadow=True)])
    assert limiter.peek("shadowed", "client", RATE).remaining == 4


def test_hit_many_of_nothing_makes_no_call(limiter):
    assert limiter.hit_many([]) == []


def test_rules_sharing_a_key_are_refused(limiter):
    with pytest.raises(ValueError, match="own scope"):
        limiter.hit_many([Rule("same", "client", RATE), Rule("same", "client", "1/s")])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"algorithm": "nope"}, ValueError, "Unknown algorithm 'nope'"),
        ({"cost": 0}, ValueError, "cost must be a positive integer"),
        ({"cost": 1.5}, ValueError, "cost must be a positive integer"),
        ({"cost": True}, ValueError, "cost must be a positive integer"),
        ({"scope": ["list"]}, ValueError, "scope must be a non-empty string"),
        ({"burst": 0}, ValueError, "burst must be a positive integer"),
        ({"rate": "lots"}, ValueError, "Invalid rate 'lots'"),
        ({"rate": "1000000000/d"}, ValueError, "too large to evaluate exactly"),
        ({"scope": ""}, ValueError, "scope must be a non-empty string"),
        ({"identity": None}, TypeError, "identity must be str, bytes or int"),
        ({"identity": 1.5}, TypeError, "identity must be str, bytes or int"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(limiter, kwargs, error, match):
    arguments = {"scope": "s", "identity": "client", "rate": RATE} | kwargs
    with pytest.raises(error, match=match):
        limiter.hit(
            arguments.pop("scope"),
            arguments.pop("identity"),
            arguments.pop("rate"),
            **arguments,
        )


# The longest a state may be needed: the window (two for the counter) or the
# time to refill completely. RATE is 5 per 10 s. A state hash lives a quarter
# longer (a second at least; see store in prelude.lua), a sorted set no longer.
TTL_BOUND_MS = {
    "fixed_window": 10_000,
    "sliding_window_log": 10_000,
    "sliding_window_counter": 20_000,
    "token_bucket": 10_000,
    "leaky_bucket": 10_000,
    "gcra": 10_000,
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_key_has_a_ttl_within_the_algorithms_bound(
    make_limiter, redis_client, key_prefix, algorithm
):
    limiter = make_limiter()  # Redis TIME: TTLs run on the server's clock
    for identity in ("a", "b", b"\xff", 7):
        for cost in (1, 4):
            limiter.hit("ttl", identity, RATE, algorithm=algorithm, cost=cost)
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}*")]
    usage_keys = [k for k in keys if ":usage" in k]  # counters, HLLs, offenders
    state_keys = [k for k in keys if ":usage" not in k]
    assert len(state_keys) == 4 and usage_keys
    bound = TTL_BOUND_MS[algorithm]
    if algorithm not in OWN_KEY_ALGORITHMS:
        bound += max(1000, bound // 4)
    for key in state_keys:
        assert 0 < redis_client.pttl(key) <= bound
    for key in usage_keys:  # usage counters live until the drain (USAGE_TTL)
        assert 0 < redis_client.pttl(key) <= 7 * 24 * 3600 * 1000


def test_peeks_write_nothing_and_denials_only_count_usage(
    limiter, redis_client, key_prefix
):
    for algorithm in ALGORITHMS:
        limiter.peek("quiet", "client", RATE, algorithm=algorithm)
        limiter.hit("quiet", "client", RATE, algorithm=algorithm, cost=99)
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}*"))
    usage_key, distinct_key, offenders_key = keys
    assert usage_key.endswith(":usage")
    counts = {
        k.decode().split("|", 1)[1]: int(v)
        for k, v in redis_client.hgetall(usage_key).items()
    }
    assert counts == {"quiet|b": len(ALGORITHMS)}
    assert distinct_key.startswith(f"{usage_key}:hll:")
    assert redis_client.pfcount(distinct_key) == 1  # one client
    ((member, denials),) = redis_client.zrange(offenders_key, 0, -1, withscores=True)
    assert member.decode().endswith("||quiet")  # no label for a plain string
    assert denials == len(ALGORITHMS)


def test_usage_counting_can_be_turned_off(
    make_limiter, redis_client, key_prefix, settings
):
    settings.RATELIMIT = {**settings.RATELIMIT, "COUNT_USAGE": False}
    make_limiter().hit("uncounted", "client", RATE)
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}*")]
    assert len(keys) == 1 and not keys[0].endswith(":usage")


def test_the_script_counts_usage_per_policy_and_minute(limiter, redis_client, clock):
    rules = [
        Rule("enforced", "client", "2/m", "fixed_window", cost=1),
        Rule("watched", "client", "1/m", "fixed_window", shadow=True),
    ]
    for _ in range(3):
        limiter.hit_many(rules)
    (usage_key,) = {usage.live_key_of(k) for k in limiter.keys_for(rules)}
    minute = clock() // 60000
    counts = {k.decode(): int(v) for k, v in redis_client.hgetall(usage_key).items()}
    assert counts == {
        # The first call admitted both rules (one identity, cost 1): one "g",
        # a "u" (an admission of cost 1: allowed and cost) for each of both.
        f"{minute}|enforced\x1fwatched|g": 1,
        f"{minute}|enforced|u": 1,  # the 2nd: the shadow rule would block
        f"{minute}|enforced|b": 1,  # the 3rd: blocked
        f"{minute}|watched|s": 2,  # it would have blocked the 2nd and the 3rd
    }
    per_scope: dict = {}
    for field, value in counts.items():
        parsed = usage.parse_field(field)
        for scope in parsed.scopes:
            per_scope[scope, parsed.metric] = per_scope.get((scope, parsed.metric), 0)
            per_scope[scope, parsed.metric] += value
    assert per_scope == {
        ("enforced", "unit"): 2,
        ("enforced", "blocked"): 1,
        ("watched", "unit"): 1,
        ("watched", "shadow_blocked"): 2,
    }


def test_an_admission_costing_more_than_one_counts_allowed_and_cost_apart(
    limiter, redis_client, clock
):
    rule = Rule("costly", "client", "10/m", "fixed_window", cost=3)
    limiter.hit_many([rule])
    (usage_key,) = {usage.live_key_of(k) for k in limiter.keys_for([rule])}
    counts = {k.decode(): int(v) for k, v in redis_client.hgetall(usage_key).items()}
    minute = clock() // 60000
    assert counts == {f"{minute}|costly|a": 1, f"{minute}|costly|c": 3}


def test_recovers_after_script_flush(limiter, redis_client):
    limiter.hit("flush", "client", RATE)
    forget_scripts(redis_client)
    assert limiter.hit("flush", "client", RATE).remaining == 3


def test_recovers_after_a_redis_restart(make_limiter):
    server = RedisServer().start()
    try:
        limiter = make_limiter(client=redis.Redis.from_url(server.url))
        assert limiter.hit("restart", "client", RATE).remaining == 4
        server.stop()
        server = RedisServer(port=server.port).start()  # empty: no script, no state
        assert limiter.hit("restart", "client", RATE).remaining == 4
        assert limiter.hit("restart", "client", RATE).remaining == 3
    finally:
        server.stop()


HOSTILE_IDENTITIES = [
    "x" * 65_536,
    "nul\x00byte",
    b"\xff\xfe not utf-8",
    "{tag}injection}{",
    "lone \ud800 surrogate",
    "rl:1:{s1}:*",
    "",
    "\U0001f600",
    0,
    -(10**30),
]


def test_hostile_identities_give_fixed_length_isolated_keys(limiter):
    rules = [Rule("hostile", identity, RATE) for identity in HOSTILE_IDENTITIES]
    keys = limiter.keys_for(rules)
    assert len(set(keys)) == len(HOSTILE_IDENTITIES)
    assert len({len(key) for key in keys}) <= 2  # shard number width varies
    for key in keys:
        assert len(key) < 64
        assert key.count("{") == key.count("}") == 1
        assert "tag" not in key and "\x00" not in key
    for identity in HOSTILE_IDENTITIES:
        assert limiter.hit("hostile", identity, RATE).remaining == 4


def test_every_key_of_one_identity_shares_a_hash_tag(limiter):
    keys = limiter.keys_for(
        [
            Rule(f"scope-{n}", "client", RATE, algorithm)
            for n, algorithm in enumerate(ALGORITHMS)
        ]
    )
    tags = {key[key.index("{") : key.index("}") + 1] for key in keys}
    assert len(tags) == 1


def test_keys_name_scope_and_algorithm_but_not_the_rate(limiter):
    """A rule's state is the field <scope>:<algorithm> of its identity's state
    hash; a sliding window log (a sorted set) has a key of that name."""
    from ratelimit_app.keys import state_field

    one = limiter.keys_for([Rule("login", "client", "5/m", "token_bucket")])
    two = limiter.keys_for([Rule("login", "client", "50/h", "token_bucket")])
    assert one == two and one[0].endswith(":state")
    assert state_field("login", "token_bucket") == "login:tb"
    log = limiter.keys_for([Rule("login", "client", "5/m", "sliding_window_log")])
    assert log[0] == one[0].removesuffix(":state") + ":login:swl"


def test_unusual_scopes_are_hashed_to_a_fixed_length(limiter):
    from ratelimit_app.keys import state_field

    scope = "a {weird} scope/" * 100
    field = state_field(scope, "gcra")
    assert field.startswith("~") and len(field) < 40
    key = limiter.keys_for([Rule(scope, "client", RATE, "sliding_window_log")])[0]
    assert len(key) < 80 and ":~" in key
    assert limiter.hit(scope, "client", RATE).remaining == 4


def test_the_identity_hash_is_keyed(make_limiter):
    rule = [Rule("s", "192.0.2.1", RATE)]
    one = make_limiter(secret=b"first-secret-0123456789").keys_for(rule)
    two = make_limiter(secret=b"other-secret-0123456789").keys_for(rule)
    assert one != two


def test_async_twins_share_state_with_the_sync_api(limiter, redis_url):
    async def scenario():
        limiter._async_client = redis.asyncio.from_url(redis_url)
        try:
            first = await limiter.ahit("async", "client", RATE, cost=2)
            peeked = await limiter.apeek("async", "client", RATE)
            many = await limiter.ahit_many([Rule("async", "client", RATE, cost=4)])
            await limiter.areset("async", "client")
            after_reset = await limiter.apeek("async", "client", RATE)
            return first, peeked, many, after_reset
        finally:
            await limiter._async_client.aclose()

    first, peeked, many, after_reset = asyncio.run(scenario())
    assert (first.allowed, first.remaining) == (True, 3)
    assert peeked.remaining == 3
    assert (many[0].allowed, many[0].remaining) == (False, 3)
    assert after_reset.remaining == 5
    assert limiter.peek("async", "client", RATE).remaining == 5


def test_async_recovers_after_script_flush(limiter, redis_url, redis_client):
    async def scenario():
        limiter._async_client = redis.asyncio.from_url(redis_url)
        try:
            await limiter.ahit("aflush", "client", RATE)
            forget_scripts(redis_client)
            return await limiter.ahit("aflush", "client", RATE)
        finally:
            await limiter._async_client.aclose()

    assert asyncio.run(scenario()).remaining == 3


def test_module_api_uses_the_settings(key_prefix, redis_url):
    with override_settings(
        RATELIMIT={"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
    ):
        assert limiter_module.hit("module", "client", RATE).remaining == 4
        assert (
            limiter_module.hit_many([Rule("module", "client", RATE)])[0].remaining == 3
        )
        assert limiter_module.peek("module", "client", RATE).remaining == 3
        limiter_module.reset("module", "client")
        assert limiter_module.peek("module", "client", RATE).remaining == 5

        async def scenario():
            await limiter_module.ahit("module", "client", RATE)
            await limiter_module.ahit_many([Rule("module", "client", RATE)])
            peeked = await limiter_module.apeek("module", "client", RATE)
            await limiter_module.areset("module", "client")
            return peeked

        assert asyncio.run(scenario()).remaining == 3


# -- prepared calls --------------------------------------------------------------


def test_a_prepared_command_is_what_redis_py_would_send(make_limiter, redis_client):
    from ratelimit_app.backends import direct

    engine = make_limiter()
    _, call = engine._one("enc", "client-é", "5/m", "gcra", 1, None, "hit")
    engine.hit("enc", "client-é", "5/m")  # the first send encodes it
    connection = redis_client.connection_pool.get_connection()
    try:
        for verb, target in (
            ("FCALL", call.script.function),
            ("EVALSHA", call.script.sha),
        ):
            expected = b"".join(
                connection.pack_command(
                    verb, target, len(call.keys), *call.keys, *call.args
                )
            )
            assert call.encoded(redis_client, verb) == expected
            encoded = direct.encode(redis_client, verb, target, call.keys, call.args)
            assert encoded == expected
    finally:
        redis_client.connection_pool.release(connection)


def test_calls_are_prepared_once_and_survive_a_script_flush(make_limiter, redis_client):
    engine = make_limiter()
    first = engine._one("once", "client", "5/m", "gcra", 1, None, "hit")
    assert engine._one("once", "client", "5/m", "gcra", 1, None, "hit") is first
    assert engine.hit("once", "client", "5/m").allowed
    forget_scripts(redis_client)
    assert engine.hit("once", "client", "5/m").remaining == 3
    items = [(first[0], "client")]
    assert engine.prepared(items, "hit") is engine.prepared(items, "hit")


def test_an_identity_of_another_type_is_not_taken_from_the_memo(make_limiter):
    engine = make_limiter()
    engine.hit("typed", 1, "5/m")
    with pytest.raises(TypeError, match="identity must be str, bytes or int"):
        engine.hit("typed", True, "5/m")


def test_a_test_clock_prepares_every_call_anew(limiter):
    first = limiter._one("clocked", "client", "5/m", "gcra", 1, None, "hit")
    assert limiter._one("clocked", "client", "5/m", "gcra", 1, None, "hit") is not first
