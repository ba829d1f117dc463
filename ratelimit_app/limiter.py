"""The programmatic API: hit, peek, reset and hit_many, sync and async."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from . import conf
from .algorithms import REPLY_FIELDS, Script, script_for
from .backends.redis import arun_script, get_async_client, get_client, run_script
from .keys import ALGORITHM_CODES, identity_base, key_suffix, rule_key
from .rates import Rate
from .types import Decision, Identity, Rule, check_identity

Clock = Callable[[], int]

_REASONS = {0: "ok", 1: "limit", 2: "not_consumed", 3: "cost_exceeds_capacity"}


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """Everything about a rule but its identity, validated once and cached."""

    argv: tuple
    suffix: str
    capacity: int
    script: Script


@lru_cache(maxsize=4096, typed=True)
def _cached_spec(scope, rate, algorithm, cost, burst, shadow) -> RuleSpec:
    return rule_spec(Rule(scope, "", rate, algorithm, cost, burst, shadow))


def rule_spec(rule: Rule) -> RuleSpec:
    rate: Rate = rule.parsed_rate
    shadow = 1 if rule.shadow else 0
    argv = (
        rule.algorithm,
        rate.limit,
        rate.period_ms,
        rule.capacity,
        rule.cost,
        shadow,
    )
    return RuleSpec(
        argv,
        key_suffix(rule.scope, rule.algorithm),
        rule.capacity,
        script_for(frozenset((rule.algorithm,))),
    )


def spec_of(scope, rate, algorithm, cost, burst, shadow=False) -> RuleSpec:
    try:
        return _cached_spec(scope, rate, algorithm, cost, burst, shadow)
    except TypeError:  # unhashable arguments: the uncached checks explain
        return rule_spec(Rule(scope, "", rate, algorithm, cost, burst, shadow))


class Limiter:
    """Evaluates rules against Redis.

    ``client``/``async_client`` default to the clients from settings. ``clock``
    returns integer milliseconds and replaces Redis ``TIME`` — for tests only;
    production leaves it None so every process shares the Redis clock.
    """

    def __init__(
        self,
        *,
        client=None,
        async_client=None,
        clock: Clock | None = None,
        prefix: str | None = None,
        secret: bytes | None = None,
        shards: int | None = None,
    ) -> None:
        self._client = client
        self._async_client = async_client
        self.clock = clock
        self.prefix = prefix if prefix is not None else conf.key_prefix()
        self.secret = secret if secret is not None else conf.key_secret()
        self.shards = shards if shards is not None else conf.shard_count()

    @property
    def client(self):
        return self._client or get_client()

    @property
    def async_client(self):
        return self._async_client or get_async_client()

    # -- building the call ---------------------------------------------------

    def _now(self) -> int | str:
        return "" if self.clock is None else int(self.clock())

    def _base(self, identity: Identity) -> str:
        return identity_base(self.prefix, self.shards, self.secret, identity)

    def keys_for(self, rules: Sequence[Rule]) -> list[str]:
        """One state key per rule; rules of one identity share a hash tag."""
        bases: dict[Identity, str] = {}
        keys = []
        for rule in rules:
            base = bases.get(rule.identity)
            if base is None:
                base = bases[rule.identity] = self._base(rule.identity)
            keys.append(rule_key(base, rule.scope, rule.algorithm))
        if len(set(keys)) != len(keys):
            raise ValueError(
                "Two rules in one call share scope, identity and algorithm; "
                "give each rule its own scope."
            )
        return keys

    def prepare(self, rules: Sequence[Rule], mode: str) -> tuple[Script, list, list]:
        """The script, KEYS and ARGV of one call evaluating ``rules``."""
        keys = self.keys_for(rules)
        args: list = [mode, self._now()]
        for rule in rules:
            args += spec_of(
                rule.scope,
                rule.rate,
                rule.algorithm,
                rule.cost,
                rule.burst,
                rule.shadow,
            ).argv
        script = script_for(frozenset(rule.algorithm for rule in rules))
        return script, keys, args

    def _prepare_one(self, scope, identity, rate, algorithm, cost, burst, mode):
        spec = spec_of(scope, rate, algorithm, cost, burst)
        key = self._base(check_identity(identity)) + spec.suffix
        return spec, [key], [mode, self._now(), *spec.argv]

    def reset_keys(self, scope: str, identity: Identity) -> list[str]:
        base = self._base(check_identity(identity))
        return [rule_key(base, scope, algorithm) for algorithm in ALGORITHM_CODES]

    # -- sync API --------------------------------------------------------------

    def hit_many(self, rules: Iterable[Rule]) -> list[Decision]:
        """Consume from every rule, or from none if any enforcing rule denies."""
        return self._many(rules, "hit")

    def peek_many(self, rules: Iterable[Rule]) -> list[Decision]:
        """Would every rule pass at its cost? Consumes nothing."""
        return self._many(rules, "peek")

    def _many(self, rules: Iterable[Rule], mode: str) -> list[Decision]:
        rules = list(rules)
        if not rules:
            return []
        reply = run_script(self.client, *self.prepare(rules, mode))
        return to_decisions(rules, reply)

    def hit(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        """Consume ``cost`` units of ``rate`` for ``identity`` within ``scope``."""
        spec, keys, args = self._prepare_one(
            scope, identity, rate, algorithm, cost, burst, "hit"
        )
        reply = run_script(self.client, spec.script, keys, args)
        return to_decision(reply, 0, spec.capacity, scope, False)

    def peek(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        burst: int | None = None,
    ) -> Decision:
        """Whether a request of cost 1 would pass now; consumes nothing."""
        spec, keys, args = self._prepare_one(
            scope, identity, rate, algorithm, 1, burst, "peek"
        )
        reply = run_script(self.client, spec.script, keys, args)
        return to_decision(reply, 0, spec.capacity, scope, False)

    def reset(self, scope: str, identity: Identity) -> None:
        """Forget every algorithm's state for this scope and identity."""
        self.client.delete(*self.reset_keys(scope, identity))

    # -- async API -------------------------------------------------------------

    async def ahit_many(self, rules: Iterable[Rule]) -> list[Decision]:
        return await self._amany(rules, "hit")

    async def apeek_many(self, rules: Iterable[Rule]) -> list[Decision]:
        return await self._amany(rules, "peek")

    async def _amany(self, rules: Iterable[Rule], mode: str) -> list[Decision]:
        rules = list(rules)
        if not rules:
            return []
        reply = await arun_script(self.async_client, *self.prepare(rules, mode))
        return to_decisions(rules, reply)

    async def ahit(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
    ) -> Decision:
        spec, keys, args = self._prepare_one(
            scope, identity, rate, algorithm, cost, burst, "hit"
        )
        reply = await arun_script(self.async_client, spec.script, keys, args)
        return to_decision(reply, 0, spec.capacity, scope, False)

    async def apeek(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        burst: int | None = None,
    ) -> Decision:
        spec, keys, args = self._prepare_one(
            scope, identity, rate, algorithm, 1, burst, "peek"
        )
        reply = await arun_script(self.async_client, spec.script, keys, args)
        return to_decision(reply, 0, spec.capacity, scope, False)

    async def areset(self, scope: str, identity: Identity) -> None:
        await self.async_client.delete(*self.reset_keys(scope, identity))


def to_decision(reply: list, index: int, capacity: int, scope: str, shadow: bool):
    """Rule ``index`` of the driver's flat reply as a Decision."""
    offset = 1 + index * REPLY_FIELDS
    status, remaining, reset_ms, retry_ms = reply[offset : offset + REPLY_FIELDS]
    return Decision(
        status == 0 or status == 2,
        capacity,
        remaining,
        reset_ms / 1000,
        None if retry_ms < 0 else retry_ms / 1000,
        scope,
        _REASONS[status],
        shadow,
    )


def to_decisions(rules: Sequence[Rule], reply: list) -> list[Decision]:
    """One Decision per rule, in order."""
    return [
        to_decision(reply, index, rule.capacity, rule.scope, rule.shadow)
        for index, rule in enumerate(rules)
    ]


@cache
def default_limiter() -> Limiter:
    """The limiter built from settings; rebuilt when settings change."""
    return Limiter()


conf.on_change(default_limiter.cache_clear)


def hit(scope, identity, rate, *, algorithm="gcra", cost=1, burst=None) -> Decision:
    """Consume ``cost`` units of ``rate`` for ``identity`` within ``scope``."""
    return default_limiter().hit(
        scope, identity, rate, algorithm=algorithm, cost=cost, burst=burst
    )


def peek(scope, identity, rate, *, algorithm="gcra", burst=None) -> Decision:
    """Whether a request of cost 1 would pass now; consumes nothing."""
    return default_limiter().peek(
        scope, identity, rate, algorithm=algorithm, burst=burst
    )


def reset(scope: str, identity: Identity) -> None:
    """Forget every algorithm's state for ``scope`` and ``identity``."""
    default_limiter().reset(scope, identity)


def hit_many(rules: Iterable[Rule]) -> list[Decision]:
    """All-or-nothing: consume from every rule, or from none."""
    return default_limiter().hit_many(rules)


def peek_many(rules: Iterable[Rule]) -> list[Decision]:
    """Would every rule pass at its cost? Consumes nothing."""
    return default_limiter().peek_many(rules)


async def ahit(scope, identity, rate, *, algorithm="gcra", cost=1, burst=None):
    return await default_limiter().ahit(
        scope, identity, rate, algorithm=algorithm, cost=cost, burst=burst
    )


async def apeek(scope, identity, rate, *, algorithm="gcra", burst=None):
    return await default_limiter().apeek(
        scope, identity, rate, algorithm=algorithm, burst=burst
    )


async def areset(scope: str, identity: Identity) -> None:
    await default_limiter().areset(scope, identity)


async def ahit_many(rules: Iterable[Rule]) -> list[Decision]:
    return await default_limiter().ahit_many(rules)


async def apeek_many(rules: Iterable[Rule]) -> list[Decision]:
    return await default_limiter().apeek_many(rules)
