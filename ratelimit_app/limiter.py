"""The programmatic API: hit, peek, reset and hit_many, sync and async."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

from . import conf
from .algorithms import REPLY_FIELDS
from .backends.redis import arun_script, get_async_client, get_client, run_script
from .keys import ALGORITHM_CODES, identity_base, rule_key
from .rates import Rate
from .types import Decision, Identity, Rule

Clock = Callable[[], int]

_REASONS = {0: "ok", 1: "limit", 2: "not_consumed", 3: "cost_exceeds_capacity"}


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

    def keys_for(self, rules: Sequence[Rule]) -> list[str]:
        """One state key per rule; rules of one identity share a hash tag."""
        bases: dict[Identity, str] = {}
        keys = []
        for rule in rules:
            base = bases.get(rule.identity)
            if base is None:
                base = bases[rule.identity] = identity_base(
                    self.prefix, self.shards, self.secret, rule.identity
                )
            keys.append(rule_key(base, rule.scope, rule.algorithm))
        if len(set(keys)) != len(keys):
            raise ValueError(
                "Two rules in one call share scope, identity and algorithm; "
                "give each rule its own scope."
            )
        return keys

    def script_args(self, rules: Sequence[Rule], mode: str) -> list:
        now = "" if self.clock is None else int(self.clock())
        args: list = [mode, now]
        for rule in rules:
            rate: Rate = rule.parsed_rate
            args += (
                rule.algorithm,
                rate.limit,
                rate.period_ms,
                rule.capacity,
                rule.cost,
                1 if rule.shadow else 0,
            )
        return args

    def reset_keys(self, scope: str, identity: Identity) -> list[str]:
        base = identity_base(self.prefix, self.shards, self.secret, identity)
        return [rule_key(base, scope, algorithm) for algorithm in ALGORITHM_CODES]

    # -- sync API --------------------------------------------------------------

    def hit_many(self, rules: Iterable[Rule]) -> list[Decision]:
        """Consume from every rule, or from none if any enforcing rule denies."""
        return self._call(list(rules), "hit")

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
        rule = Rule(scope, identity, rate, algorithm, cost, burst)
        return self._call([rule], "hit")[0]

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
        rule = Rule(scope, identity, rate, algorithm, 1, burst)
        return self._call([rule], "peek")[0]

    def reset(self, scope: str, identity: Identity) -> None:
        """Forget every algorithm's state for this scope and identity."""
        self.client.delete(*self.reset_keys(scope, identity))

    def _call(self, rules: list[Rule], mode: str) -> list[Decision]:
        if not rules:
            return []
        keys = self.keys_for(rules)
        reply = run_script(self.client, keys, self.script_args(rules, mode))
        return to_decisions(rules, reply)

    # -- async API -------------------------------------------------------------

    async def ahit_many(self, rules: Iterable[Rule]) -> list[Decision]:
        return await self._acall(list(rules), "hit")

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
        rule = Rule(scope, identity, rate, algorithm, cost, burst)
        return (await self._acall([rule], "hit"))[0]

    async def apeek(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        burst: int | None = None,
    ) -> Decision:
        rule = Rule(scope, identity, rate, algorithm, 1, burst)
        return (await self._acall([rule], "peek"))[0]

    async def areset(self, scope: str, identity: Identity) -> None:
        await self.async_client.delete(*self.reset_keys(scope, identity))

    async def _acall(self, rules: list[Rule], mode: str) -> list[Decision]:
        if not rules:
            return []
        keys = self.keys_for(rules)
        reply = await arun_script(
            self.async_client, keys, self.script_args(rules, mode)
        )
        return to_decisions(rules, reply)


def to_decisions(rules: Sequence[Rule], reply: list[int]) -> list[Decision]:
    """Turn the driver's flat reply into one Decision per rule."""
    decisions = []
    for index, rule in enumerate(rules):
        offset = 1 + index * REPLY_FIELDS
        status, remaining, reset_ms, retry_ms = reply[offset : offset + 4]
        decisions.append(
            Decision(
                allowed=status in (0, 2),
                limit=rule.capacity,
                remaining=remaining,
                reset_after=reset_ms / 1000,
                retry_after=None if retry_ms < 0 else retry_ms / 1000,
                scope=rule.scope,
                reason=_REASONS[status],
                shadow=rule.shadow,
            )
        )
    return decisions


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
