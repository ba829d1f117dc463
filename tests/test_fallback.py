"""Fail modes, the circuit breaker and the in-process limiter, on a closed port."""

from __future__ import annotations

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured, ValidationError

from ratelimit_app import conf
from ratelimit_app.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from ratelimit_app.fallback import LocalLimiter, fallback_of
from ratelimit_app.limiter import Limiter, spec_of
from ratelimit_app.models import Policy
from ratelimit_app.policies import PolicySpec, compile_spec
from ratelimit_app.testing import free_port
from ratelimit_app.types import Rule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def down_limiter():
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    yield Limiter(client=client, prefix="rlt-fallback:", secret=b"s" * 16)
    client.close()


# -- the breaker ---------------------------------------------------------------------


def test_the_breaker_opens_after_threshold_errors_within_the_window():
    clock = FakeClock()
    breaker = CircuitBreaker(3, window=10, cooldown=5, clock=clock)
    assert not breaker.record_failure()
    clock.now += 11  # the first error left the window
    assert not breaker.record_failure()
    assert not breaker.record_failure()
    assert breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.retry_after() == 5


def test_after_the_cool_down_one_probe_goes_through_and_its_outcome_decides():
    clock = FakeClock()
    breaker = CircuitBreaker(1, window=10, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN and not breaker.allow()
    breaker.record_failure()  # the probe failed: another cool-down
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_a_cool_down():
    clock = FakeClock()
    breaker = CircuitBreaker(1, window=10, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    clock.now += 5
    assert breaker.allow()


# -- fail modes through the limiter ---------------------------------------------------


@pytest.mark.parametrize(
    ("fail_mode", "allowed", "reason"),
    [
        ("open", True, "fallback_open"),
        ("closed", False, "fallback_closed"),
        ("local", True, "fallback_local"),
    ],
)
def test_hit_applies_its_fail_mode_when_redis_is_down(
    down_limiter, fail_mode, allowed, reason
):
    decision = down_limiter.hit("s", "client", "5/m", fail_mode=fail_mode)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_the_default_fail_mode_comes_from_settings(down_limiter, settings):
    assert down_limiter.hit("s", "client", "5/m").reason == "fallback_open"
    settings.RATELIMIT = {**settings.RATELIMIT, "FAIL_MODE": "closed"}
    assert down_limiter.hit("s", "client", "5/m").reason == "fallback_closed"


def test_local_limits_at_the_rule_rate_and_all_or_nothing(down_limiter):
    rules = [Rule("a", "c", "2/m"), Rule("b", "c", "5/m")]
    runs = [down_limiter.hit_many(rules, fail_mode="local") for _ in range(3)]
    assert [[d.allowed for d in run] for run in runs] == [
        [True, True],
        [True, True],
        [False, True],
    ]
    # "b" consumed nothing when "a" blocked: three units left of five.
    assert down_limiter.hit("b", "c", "5/m", fail_mode="local").remaining == 2


def test_a_closed_rule_blocks_and_a_local_rule_beside_it_consumes_nothing(
    down_limiter,
):
    rules = [Rule("a", "c", "1/m"), Rule("b", "c", "1/m")]
    decisions = down_limiter.hit_many(rules, fail_mode=["local", "closed"])
    assert [d.reason for d in decisions] == ["fallback_local", "fallback_closed"]
    assert down_limiter.hit("a", "c", "1/m", fail_mode="local").allowed


async def test_async_hit_applies_the_fail_mode():
    client = redis.asyncio.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = Limiter(async_client=client, prefix="rlt-fallback:", secret=b"s" * 16)
    decision = await limiter.ahit("s", "c", "5/m", fail_mode="closed")
    assert decision.reason == "fallback_closed"
    decisions = await limiter.ahit_many([Rule("s", "c", "5/m")], fail_mode="local")
    assert decisions[0].reason == "fallback_local"
    await client.aclose()


def test_an_unknown_fail_mode_is_refused_before_redis_is_called(down_limiter):
    with pytest.raises(ValueError, match="fail_mode must be one of open, closed"):
        down_limiter.hit("s", "client", "5/m", fail_mode="maybe")


# -- the in-process limiter -------------------------------------------------------------


def test_the_local_limiter_forgets_the_least_recent_clients_beyond_its_cap():
    local = LocalLimiter(max_keys=100, clock=FakeClock())  # no refill meanwhile
    spec = spec_of("s", "1/h", "gcra", 1, None)
    for n in range(10_000):
        local.decide(spec, f"client-{n}" * 1000, spec.rate, 1, 1, consume=True)
    assert len(local) == 100
    # The most recent client is remembered: its one unit is spent.
    last = "client-9999" * 1000
    assert not local.decide(spec, last, spec.rate, 1, 1, consume=True).allowed


def test_the_local_limiter_takes_identities_of_any_size():
    local = LocalLimiter(max_keys=10, clock=FakeClock())
    spec = spec_of("s", "1/h", "gcra", 1, None)
    for identity in (10**5000, b"\xff" * 70_000, "\udcff"):  # beyond str(int)
        assert local.decide(spec, identity, spec.rate, 1, 1, consume=True).allowed
        assert not local.decide(spec, identity, spec.rate, 1, 1, consume=True).allowed


def test_the_local_limiter_refills_with_time():
    clock = FakeClock()
    local = LocalLimiter(max_keys=10, clock=clock)
    spec = spec_of("s", "2/s", "gcra", 1, None)
    decide = lambda: local.decide(spec, "c", spec.rate, 2, 1, consume=True)  # noqa: E731
    assert [decide().allowed for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert decide().allowed


# -- settings and policy fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FAIL_MODE", "sometimes", "use one of 'open', 'closed', 'local'"),
        ("BREAKER_THRESHOLD", 0, "use an integer of at least 1"),
        ("REDIS_SOCKET_TIMEOUT", 0, "use a number of at least 0.001"),
        ("REDIS_MAX_CONNECTIONS", "many", "use an integer of at least 1"),
        ("REDIS_CONNECT_RETRIES", True, "use an integer of at least 0"),
    ],
)
def test_bad_failure_settings_say_what_to_use(settings, name, value, message):
    settings.RATELIMIT = {**settings.RATELIMIT, name: value}
    with pytest.raises(ImproperlyConfigured, match=message):
        conf.failure_settings()


def test_a_policy_fallback_rate_is_validated_in_settings_and_the_admin():
    with pytest.raises(ValueError, match="fallback_rate"):
        compile_spec(PolicySpec(name="p", rate="5/m", fallback_rate="lots"))
    policy = Policy(name="p", rate="5/m", fallback_rate="lots", fail_mode="local")
    with pytest.raises(ValidationError) as caught:
        policy.clean()
    assert "fallback_rate" in caught.value.message_dict


def test_a_policy_compiles_its_fallback():
    compiled = compile_spec(
        PolicySpec(name="p", rate="5/m", fail_mode="local", fallback_rate="2/m")
    )
    assert compiled.fallback == fallback_of("local", "2/m")
