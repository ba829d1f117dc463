"""The programmatic API: hit, peek, reset, hit_many and acquire, sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

from redis.exceptions import RedisError, ResponseError

from . import conf, deny_cache, fallback, leases, usage
from .algorithms import LEASE_REPLY_FIELDS, REPLY_FIELDS, Script, script_for
from .backends.direct import encode
from .backends.redis import arun_script, get_async_client, get_client, run_script
from .backends.topology import is_cluster
from .breaker import CircuitBreaker
from .fallback import FailMode
from .identity import display_label
from .keys import (
    OWN_KEY_ALGORITHMS,
    STATE_HASH_SUFFIX,
    hash_fields,
    identity_base,
    key_suffix,
    rule_key,
    state_field,
)
from .rates import Rate
from .types import Decision, Identity, Rule, check_identity

Clock = Callable[[], int]

_REASONS = {0: "ok", 1: "limit", 2: "not_consumed", 3: "cost_exceeds_capacity"}

# acquire() sleeps a denial's retry_after plus a random extra of up to this share
# of it (at most ACQUIRE_JITTER_MAX seconds), so waiters denied together do not
# all call Redis in the same millisecond. Small, because with a burst of 1 any
# delay after the slot opens is throughput lost for good: a lone waiter loses
# half of it on average (2.5%), N waiters about 1/(N+1) of it.
ACQUIRE_JITTER = 0.05
ACQUIRE_JITTER_MAX = 1.0
# A denial's retry_after is whole milliseconds; never spin on a zero.
ACQUIRE_MIN_PAUSE = 0.001


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """Everything about a rule but its identity, validated once and cached."""

    argv: tuple
    suffix: str
    capacity: int
    script: Script
    scope: str
    rate: Rate
    shadow: bool
    lease: bool = False

    @property
    def cost(self) -> int:
        return self.argv[4]  # see rule_spec

    @property
    def field(self) -> str:
        return self.argv[7]  # its field in the state hash; see rule_spec


@dataclass(slots=True)
class Prepared:
    """One call's script, KEYS and ARGV; a kept one (``keep``) also keeps its
    command (FCALL or EVALSHA) as the sync client encodes it, from the first
    send on."""

    script: Script
    keys: list
    args: list
    keep: bool = False
    commands: dict = field(default_factory=dict)  # verb -> encoded command

    def encoded(self, client, verb: str) -> bytes | None:
        """The ``verb`` ("FCALL" or "EVALSHA") command to send again, or None:
        let the client encode it."""
        if not self.keep:
            return None
        found = self.commands.get(verb)
        if found is None:
            target = self.script.function if verb == "FCALL" else self.script.sha
            found = encode(client, verb, target, self.keys, self.args)
            if found is None:  # the client routes itself
                self.keep = False
            else:
                self.commands[verb] = found
        return found


# Calls a limiter keeps prepared (a call repeats: the same rules for the same
# client); past it the memo starts afresh.
PREPARED_MAX = 4096


@lru_cache(maxsize=4096, typed=True)
def _cached_spec(scope, rate, algorithm, cost, burst, shadow, lease) -> RuleSpec:
    return rule_spec(Rule(scope, "", rate, algorithm, cost, burst, shadow, lease))


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
        rule.scope,  # names the usage counters
        state_field(rule.scope, rule.algorithm),  # its field in the state hash
    )
    return RuleSpec(
        argv,
        key_suffix(rule.scope, rule.algorithm),
        rule.capacity,
        script_for(frozenset((rule.algorithm,)), "single"),
        rule.scope,
        rate,
        rule.shadow,
        rule.lease,
    )


def spec_of(scope, rate, algorithm, cost, burst, shadow=False, lease=False) -> RuleSpec:
    try:
        return _cached_spec(scope, rate, algorithm, cost, burst, shadow, lease)
    except TypeError:  # unhashable arguments: the uncached checks explain
        rule = Rule(scope, "", rate, algorithm, cost, burst, shadow, lease)
        return rule_spec(rule)


class Limiter:
    """Evaluates rules against Redis.

    ``client``/``async_client`` default to the clients from settings. ``clock``
    returns integer milliseconds and replaces Redis ``TIME`` — for tests only;
    production leaves it None so every process shares the Redis clock.
    """

    # How acquire()/aacquire() wait and tell the time; swappable for tests.
    sleep = staticmethod(time.sleep)
    asleep = staticmethod(asyncio.sleep)
    monotonic = staticmethod(time.monotonic)

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
        # Usage counters' TTL in ms; "" tells the script not to count.
        self.usage_ttl = usage.ttl_seconds() * 1000 if conf.get("COUNT_USAGE") else ""
        self.offenders_kept = usage.offenders_per_shard()
        self.breaker = CircuitBreaker.from_settings()
        # The local deny cache (see deny_cache); never with a test clock,
        # whose milliseconds are not the monotonic clock's.
        on = conf.get("DENY_CACHE") and clock is None
        self.deny = deny_cache.cache if on else None
        self.epoch_key = deny_cache.epoch_key(self.prefix)
        self.leases = leases.table
        # With Redis's clock a call's script, KEYS and ARGV never change for
        # the same rules and identities: prepare (and encode) each once.
        self._calls: dict[tuple, Prepared] = {}
        self._state_keys: dict[tuple, str] = {}
        self._prepared_one = lru_cache(maxsize=PREPARED_MAX, typed=True)(
            self._prepare_one
        )

    @property
    def client(self):
        return self._client or get_client()

    @property
    def async_client(self):
        return self._async_client or get_async_client()

    # -- building the call ---------------------------------------------------

    def _now(self) -> int | str:
        return "" if self.clock is None else int(self.clock())

    def _header(self, mode: str) -> list:
        """The ARGV before the rules (see driver.lua)."""
        return [mode, self._now(), self.usage_ttl, self.offenders_kept]

    def _label(self, identity: Identity) -> str:
        """The identity as the offender stats may show it (when counting)."""
        return display_label(identity) if self.usage_ttl else ""

    def _base(self, identity: Identity) -> str:
        return identity_base(self.prefix, self.shards, self.secret, identity)

    def pack(
        self,
        items: Sequence[tuple[RuleSpec, Identity]],
        mode: str,
        wants: Sequence[int] = (),
    ):
        """The script, KEYS and ARGV of one call; rules of one identity share
        a hash tag, so they sit in one Redis Cluster slot. ``wants`` (the
        "lease" mode) gives each rule's units wanted."""
        bases: dict[Identity, str] = {}
        keys, args, algorithms = [], self._header(mode), set()
        states = set()  # (key, field): one per rule
        header = len(args)
        for spec, identity in items:
            base = bases.get(identity)
            if base is None:
                base = bases[identity] = self._base(check_identity(identity))
            keys.append(base + spec.suffix)
            states.add((base, spec.field))
            args += spec.argv
            args.append(self._label(identity))
            if wants:
                args.append(wants[len(keys) - 1])
            algorithms.add(spec.argv[0])
        if len(states) != len(keys):
            raise ValueError(
                "Two rules in one call share scope, identity and algorithm; "
                "give each rule its own scope."
            )
        if self.usage_ttl:  # the first rule's shard counts the call's usage
            keys.append(usage.live_key_of(keys[0]))
        kind = _kind(mode, len(items))
        if kind != "single":  # the driver's ARGV has the usage group
            args.insert(header, _usage_group(items, mode))
        return script_for(frozenset(algorithms), kind), keys, args

    def prepared(self, items: Sequence[tuple[RuleSpec, Identity]], mode: str):
        """``pack`` as a ``Prepared`` call, memoised unless a test clock runs."""
        if self.clock is not None:
            return Prepared(*self.pack(items, mode))
        memo = (mode, *[(spec.argv, i, type(i)) for spec, i in items])
        found = self._calls.get(memo)
        if found is None:
            found = Prepared(*self.pack(items, mode), keep=True)
            if len(self._calls) >= PREPARED_MAX:
                self._calls.clear()
            self._calls[memo] = found
        return found

    def state_keys(self, items: Sequence[tuple[RuleSpec, Identity]]) -> list[str]:
        """One state key per (spec, identity); no checks for duplicates.
        Memoised (the leased path's lookups need keys, not a whole call)."""
        keys, memo = [], self._state_keys
        for spec, identity in items:
            found = memo.get((spec.suffix, identity, type(identity)))
            if found is None:
                found = self._base(check_identity(identity)) + spec.suffix
                if len(memo) >= PREPARED_MAX:
                    memo.clear()
                memo[(spec.suffix, identity, type(identity))] = found
            keys.append(found)
        return keys

    def keys_for(self, rules: Sequence[Rule]) -> list[str]:
        """One state key per rule."""
        return self.pack(_items(rules), "hit")[1][: len(rules)]

    def _prepare_one(self, scope, identity, rate, algorithm, cost, burst, mode):
        """(spec, Prepared) of a one-rule call."""
        spec = spec_of(scope, rate, algorithm, cost, burst)
        key = self._base(check_identity(identity)) + spec.suffix
        keys = [key, usage.live_key_of(key)] if self.usage_ttl else [key]
        args = [*self._header(mode), *spec.argv, self._label(identity)]
        return spec, Prepared(spec.script, keys, args, keep=self.clock is None)

    def _one(self, scope, identity, rate, algorithm, cost, burst, mode):
        """``_prepare_one``, memoised unless a test clock runs."""
        if self.clock is None:
            with contextlib.suppress(TypeError):  # unhashable: prepare anew
                return self._prepared_one(
                    scope, identity, rate, algorithm, cost, burst, mode
                )
        return self._prepare_one(scope, identity, rate, algorithm, cost, burst, mode)

    def reset_keys(self, scope: str, identity: Identity) -> list[str]:
        """The keys of the scope's own-key algorithms for this identity."""
        base = self._base(check_identity(identity))
        return [rule_key(base, scope, algorithm) for algorithm in OWN_KEY_ALGORITHMS]

    def state_hash(self, identity: Identity) -> str:
        """The identity's state hash (see keys.key_suffix)."""
        return self._base(check_identity(identity)) + STATE_HASH_SUFFIX

    # -- sync API --------------------------------------------------------------

    def hit_many(
        self, rules: Iterable[Rule], *, fail_mode: FailMode = None
    ) -> list[Decision]:
        """Consume from every rule, or from none if any enforcing rule denies."""
        return self.decide(_items(rules), "hit", fail_mode=fail_mode)

    def peek_many(self, rules: Iterable[Rule]) -> list[Decision]:
        """Would every rule pass at its cost? Consumes nothing."""
        return self.decide(_items(rules), "peek")

    def decide(
        self,
        items: Sequence[tuple[RuleSpec, Identity]],
        mode: str = "hit",
        *,
        fail_mode: FailMode = None,
    ) -> list[Decision]:
        """Evaluate prepared (spec, identity) pairs in one call (the hot path).

        When Redis fails, ``fail_mode`` decides (one per item, or one for all;
        default RATELIMIT['FAIL_MODE']): see ``fallback``.
        """
        if not items:
            return []
        if mode == "hit" and _all_leased(items):
            local = self.from_leases(items)
            if local is not None:
                return local
        return fallback.guard(
            lambda: self._decide(items, mode), items, mode, fail_mode, self.breaker
        )

    def decide_prepared(
        self, items, call: Prepared, fail_mode: FailMode = None
    ) -> list[Decision]:
        """``decide`` of a hit whose rules never lease, its call ``prepared``
        by the caller for this limiter (the called lane keeps one per
        identity; see ``lanes``): the deny cache, then the script, through
        the breaker and the fail modes."""
        return fallback.guard(
            lambda: self._ask(self.client, call, items, "hit")[0],
            items,
            "hit",
            fail_mode,
            self.breaker,
        )

    async def adecide_prepared(
        self, items, call: Prepared, fail_mode: FailMode = None
    ) -> list[Decision]:
        """The asyncio twin of ``decide_prepared``."""

        async def ask() -> list[Decision]:
            return (await self._aask(self.async_client, call, items, "hit"))[0]

        return await fallback.aguard(ask, items, "hit", fail_mode, self.breaker)

    def from_leases(self, items) -> list[Decision] | None:
        """Every rule admitted from this process's leases, or None (nothing
        taken): the common leased call needs neither Redis nor the guard.
        Every rule of ``items`` must lease."""
        specs = [spec for spec, _ in items]
        ids = leases.lease_ids(self.state_keys(items), specs)
        return leases.admit_all(self.leases, ids, specs)

    def _decide(self, items, mode: str) -> list[Decision]:
        client = self.client
        if is_cluster(client) and _several_identities(items):
            return self._decide_per_identity(client, items, mode)
        if mode == "hit" and _leased(items):  # maybe no call at all
            return self._leased_call(client, items, self.state_keys(items))
        return self._call(client, self.prepared(items, mode), items, mode)

    def _call(self, client, call: Prepared, items, mode) -> list[Decision]:
        """One script call, unless a lease or the deny cache answers."""
        if mode == "hit" and _leased(items):
            return self._leased_call(client, items, call.keys)
        return self._ask(client, call, items, mode)[0]

    def _ask(self, client, call: Prepared, items, mode):
        """(decisions, the script's reply, or None when the deny cache answered)."""
        fields = _reply_fields(mode)
        script, keys, args = call.script, call.keys, call.args
        if self.deny is None or mode == "peek":
            reply = run_script(client, script, keys, args, call)
            return to_decisions(items, reply, fields), reply
        started = deny_cache.now_ms()
        local = self.deny.lookup(items, keys, started)
        if local is not None and not self.deny.fresh(self.epoch_key, started):
            self.deny.observe(self.epoch_key, client.get(self.epoch_key), started)
            local = self.deny.lookup(items, keys, deny_cache.now_ms())
        if local is not None:
            self.deny.count(self, items, keys, local)
            return local, None
        reply = run_script(client, script, keys, args, call)
        decisions = to_decisions(items, reply, fields)
        if any_denied(decisions):  # only denials are kept
            if self.deny.known(self.epoch_key):
                self.deny.remember(items, keys, decisions, started, self.epoch_key)
            else:  # the first denial: read the epoch, so the next can be kept
                with contextlib.suppress(RedisError):
                    epoch = client.get(self.epoch_key)
                    self.deny.observe(self.epoch_key, epoch, deny_cache.now_ms())
        return decisions, reply

    def _leased_call(self, client, items, keys) -> list[Decision]:
        """Leased rules from this process's leases; Redis for the others."""
        call = leases.LeasedCall(self.leases, self, items, keys)
        local = call.local()
        if local is not None:
            return local
        pending, _, wants = call.pending()
        try:
            lease = Prepared(*self.pack(pending, "lease", wants))
            decisions, reply = self._ask(client, lease, pending, "lease")
        except BaseException:
            call.abort()
            raise
        return call.settle(decisions, reply, wants)

    def _decide_per_identity(self, client, items, mode: str) -> list[Decision]:
        """One call per identity, in order of first appearance (Redis Cluster:
        each identity's keys share a slot, different identities need not).

        All-or-nothing holds within an identity; once one denies, the later
        ones are only peeked, and what the earlier ones consumed stays.
        """
        replies = {}
        for group in _by_identity(items):
            reply = run_script(client, *self.pack([items[i] for i in group], mode))
            replies.update(zip(group, _rule_replies(reply), strict=True))
            mode = mode if reply[0] else "peek"
        return _merged(items, replies)

    def hit(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
        fail_mode: FailMode = None,
    ) -> Decision:
        """Consume ``cost`` units of ``rate`` for ``identity`` within ``scope``."""
        spec, prepared = self._one(scope, identity, rate, algorithm, cost, burst, "hit")
        items = [(spec, identity)]

        def call():
            return self._call(self.client, prepared, items, "hit")

        return fallback.guard(call, items, "hit", fail_mode, self.breaker)[0]

    def acquire(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
        timeout: float | None = None,
        fail_mode: FailMode = None,
    ) -> Decision:
        """``hit`` until allowed, sleeping each denial's ``retry_after`` (+ jitter).

        ``timeout`` (seconds): None waits forever, 0 tries once. Returns the
        allowed decision, or the last denied one when the timeout has passed or
        the next ``retry_after`` lies beyond it (waiting could not help), or at
        once when the cost exceeds the capacity (``retry_after`` None).
        """
        deadline = _deadline(timeout, self.monotonic())
        while True:
            decision = self.hit(
                scope,
                identity,
                rate,
                algorithm=algorithm,
                cost=cost,
                burst=burst,
                fail_mode=fail_mode,
            )
            pause = acquire_pause(decision, deadline, self.monotonic())
            if pause is None:
                return decision
            self.sleep(pause)

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
        spec, call = self._one(scope, identity, rate, algorithm, 1, burst, "peek")
        reply = run_script(self.client, call.script, call.keys, call.args, call)
        return to_decision(reply, 0, spec.capacity, scope, False)

    def reset(self, scope: str, identity: Identity) -> None:
        """Forget every algorithm's state for this scope and identity."""
        client, key = self.client, self.state_hash(identity)
        try:
            client.hdel(key, *hash_fields(scope))
        except ResponseError as exc:
            if not _wrong_type(exc):
                raise
            client.delete(key)  # not a hash: no state of this engine's
        client.delete(*self.reset_keys(scope, identity))
        self.forget_denials()

    def forget_denials(self) -> None:
        """After a reset: every process's deny cache drops its denials within
        POLICY_REFRESH_INTERVAL (a new epoch token), this one's at once."""
        if self.deny is not None:
            self.client.set(self.epoch_key, _token(), ex=deny_cache.EPOCH_TTL)
            deny_cache.cache.clear()

    # -- async API -------------------------------------------------------------

    async def ahit_many(
        self, rules: Iterable[Rule], *, fail_mode: FailMode = None
    ) -> list[Decision]:
        return await self.adecide(_items(rules), "hit", fail_mode=fail_mode)

    async def apeek_many(self, rules: Iterable[Rule]) -> list[Decision]:
        return await self.adecide(_items(rules), "peek")

    async def adecide(
        self,
        items: Sequence[tuple[RuleSpec, Identity]],
        mode: str = "hit",
        *,
        fail_mode: FailMode = None,
    ) -> list[Decision]:
        if not items:
            return []
        if mode == "hit" and _all_leased(items):
            local = self.from_leases(items)
            if local is not None:
                return local
        return await fallback.aguard(
            lambda: self._adecide(items, mode), items, mode, fail_mode, self.breaker
        )

    async def _adecide(self, items, mode: str) -> list[Decision]:
        client = self.async_client
        if is_cluster(client) and _several_identities(items):
            return await self._adecide_per_identity(client, items, mode)
        if mode == "hit" and _leased(items):
            return await self._aleased_call(client, items, self.state_keys(items))
        return await self._acall(client, self.prepared(items, mode), items, mode)

    async def _acall(self, client, call: Prepared, items, mode):
        """The asyncio twin of ``_call``."""
        if mode == "hit" and _leased(items):
            return await self._aleased_call(client, items, call.keys)
        return (await self._aask(client, call, items, mode))[0]

    async def _aask(self, client, call: Prepared, items, mode):
        """The asyncio twin of ``_ask`` (``call.command`` is the sync
        client's encoding: not sent here)."""
        fields = _reply_fields(mode)
        script, keys, args = call.script, call.keys, call.args
        if self.deny is None or mode == "peek":
            reply = await arun_script(client, script, keys, args)
            return to_decisions(items, reply, fields), reply
        started = deny_cache.now_ms()
        local = self.deny.lookup(items, keys, started)
        if local is not None and not self.deny.fresh(self.epoch_key, started):
            epoch = await client.get(self.epoch_key)
            self.deny.observe(self.epoch_key, epoch, started)
            local = self.deny.lookup(items, keys, deny_cache.now_ms())
        if local is not None:
            self.deny.count(self, items, keys, local)
            return local, None
        reply = await arun_script(client, script, keys, args)
        decisions = to_decisions(items, reply, fields)
        if any_denied(decisions):  # only denials are kept
            if self.deny.known(self.epoch_key):
                self.deny.remember(items, keys, decisions, started, self.epoch_key)
            else:  # the first denial: read the epoch, so the next can be kept
                with contextlib.suppress(RedisError):
                    epoch = await client.get(self.epoch_key)
                    self.deny.observe(self.epoch_key, epoch, deny_cache.now_ms())
        return decisions, reply

    async def _aleased_call(self, client, items, keys) -> list[Decision]:
        """The asyncio twin of ``_leased_call``."""
        call = leases.LeasedCall(self.leases, self, items, keys)
        local = call.local()
        if local is not None:
            return local
        pending, _, wants = call.pending()
        try:
            lease = Prepared(*self.pack(pending, "lease", wants))
            decisions, reply = await self._aask(client, lease, pending, "lease")
        except BaseException:
            call.abort()
            raise
        return call.settle(decisions, reply, wants)

    async def _adecide_per_identity(self, client, items, mode: str):
        """The asyncio twin of ``_decide_per_identity``."""
        replies = {}
        for group in _by_identity(items):
            packed = self.pack([items[i] for i in group], mode)
            reply = await arun_script(client, *packed)
            replies.update(zip(group, _rule_replies(reply), strict=True))
            mode = mode if reply[0] else "peek"
        return _merged(items, replies)

    async def ahit(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
        fail_mode: FailMode = None,
    ) -> Decision:
        spec, prepared = self._one(scope, identity, rate, algorithm, cost, burst, "hit")
        items = [(spec, identity)]

        async def call():
            return await self._acall(self.async_client, prepared, items, "hit")

        return (await fallback.aguard(call, items, "hit", fail_mode, self.breaker))[0]

    async def aacquire(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        cost: int = 1,
        burst: int | None = None,
        timeout: float | None = None,
        fail_mode: FailMode = None,
    ) -> Decision:
        """The asyncio twin of ``acquire`` (``asyncio.sleep`` between tries)."""
        deadline = _deadline(timeout, self.monotonic())
        while True:
            decision = await self.ahit(
                scope,
                identity,
                rate,
                algorithm=algorithm,
                cost=cost,
                burst=burst,
                fail_mode=fail_mode,
            )
            pause = acquire_pause(decision, deadline, self.monotonic())
            if pause is None:
                return decision
            await self.asleep(pause)

    async def apeek(
        self,
        scope: str,
        identity: Identity,
        rate: str | Rate,
        *,
        algorithm: str = "gcra",
        burst: int | None = None,
    ) -> Decision:
        spec, call = self._one(scope, identity, rate, algorithm, 1, burst, "peek")
        reply = await arun_script(self.async_client, call.script, call.keys, call.args)
        return to_decision(reply, 0, spec.capacity, scope, False)

    async def areset(self, scope: str, identity: Identity) -> None:
        client, key = self.async_client, self.state_hash(identity)
        try:
            await client.hdel(key, *hash_fields(scope))
        except ResponseError as exc:
            if not _wrong_type(exc):
                raise
            await client.delete(key)  # not a hash: no state of this engine's
        await client.delete(*self.reset_keys(scope, identity))
        if self.deny is not None:
            await client.set(self.epoch_key, _token(), ex=deny_cache.EPOCH_TTL)
            deny_cache.cache.clear()


def to_decision(
    reply: list,
    index: int,
    capacity: int,
    scope: str,
    shadow: bool,
    fields: int = REPLY_FIELDS,
):
    """Rule ``index`` of the driver's flat reply as a Decision."""
    offset = 1 + index * fields
    status, remaining = reply[offset], reply[offset + 1]
    reset_ms, retry_ms = reply[offset + 2], reply[offset + 3]
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


def to_decisions(
    items: Sequence[tuple[RuleSpec, Identity]], reply: list, fields=REPLY_FIELDS
):
    """One Decision per rule, in order (``fields`` per rule in the reply)."""
    return [
        to_decision(reply, index, spec.capacity, spec.scope, spec.shadow, fields)
        for index, (spec, _) in enumerate(items)
    ]


def any_denied(decisions: list[Decision]) -> bool:
    """True when some rule denied (a loop: asked for every decision call)."""
    for decision in decisions:  # noqa: SIM110
        if not decision.allowed:
            return True
    return False


def _wrong_type(exc: ResponseError) -> bool:
    """Redis refused a command for the type of the key it names."""
    return str(exc).startswith("WRONGTYPE")


def _kind(mode: str, rules: int) -> str:
    """The script a call runs (see algorithms.DRIVERS)."""
    if mode == "lease":
        return "lease"
    return "single" if rules == 1 else "driver"


def _reply_fields(mode: str) -> int:
    return LEASE_REPLY_FIELDS if mode == "lease" else REPLY_FIELDS


def _usage_group(items: Sequence[tuple[RuleSpec, Identity]], mode: str) -> str:
    """The usage group of a hit (see usage.py): its rules share one identity
    and cost 1 each; else "" (each rule counts its own usage)."""
    if mode != "hit" or _several_identities(items):
        return ""
    if any(spec.cost != 1 for spec, _ in items):
        return ""
    return usage.usage_group([spec.scope for spec, _ in items])


def _all_leased(items: Sequence[tuple[RuleSpec, Identity]]) -> bool:
    return all([spec.lease for spec, _ in items])


def _leased(items: Sequence[tuple[RuleSpec, Identity]]) -> bool:
    return any([spec.lease for spec, _ in items])  # a list: faster when short


def _token() -> str:
    return secrets.token_hex(8)


def _deadline(timeout: float | None, now: float) -> float:
    if timeout is None:
        return math.inf
    if timeout < 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}.")
    return now + timeout


def acquire_pause(decision: Decision, deadline: float, now: float) -> float | None:
    """Seconds to sleep before the next try, or None: return ``decision`` now.

    ``retry_after`` plus up to ACQUIRE_JITTER of it (at most ACQUIRE_JITTER_MAX),
    never past the deadline;
    None when allowed, when the cost can never pass, or when even
    ``retry_after`` ends after the deadline.
    """
    if decision.allowed or decision.retry_after is None:
        return None
    wait = max(decision.retry_after, ACQUIRE_MIN_PAUSE)
    left = deadline - now
    if wait > left:
        return None
    extra = random.uniform(0, min(wait * ACQUIRE_JITTER, ACQUIRE_JITTER_MAX))
    return min(wait + extra, left)


def _several_identities(items: Sequence[tuple[RuleSpec, Identity]]) -> bool:
    first = items[0][1]
    return any(identity != first for _, identity in items)


def _by_identity(items: Sequence[tuple[RuleSpec, Identity]]) -> list[list[int]]:
    """Indexes of ``items`` grouped by identity, in order of first appearance."""
    groups: dict[Identity, list[int]] = {}
    for index, (_, identity) in enumerate(items):
        groups.setdefault(identity, []).append(index)
    return list(groups.values())


def _rule_replies(reply: list) -> list[list]:
    """A driver reply cut into its per-rule fields."""
    fields = reply[1:]
    return [fields[i : i + REPLY_FIELDS] for i in range(0, len(fields), REPLY_FIELDS)]


def _merged(items, replies: dict[int, list]) -> list[Decision]:
    """Per-identity replies as the decisions of one call, in item order."""
    flat = [0]  # to_decision skips the "allowed" flag
    for index in range(len(items)):
        flat += replies[index]
    return to_decisions(items, flat)


def _items(rules: Iterable[Rule]) -> list[tuple[RuleSpec, Identity]]:
    return [
        (
            spec_of(r.scope, r.rate, r.algorithm, r.cost, r.burst, r.shadow, r.lease),
            r.identity,
        )
        for r in rules
    ]


@cache
def default_limiter() -> Limiter:
    """The limiter built from settings; rebuilt when settings change."""
    return Limiter()


conf.on_change(default_limiter.cache_clear)


def hit(
    scope, identity, rate, *, algorithm="gcra", cost=1, burst=None, fail_mode=None
) -> Decision:
    """Consume ``cost`` units of ``rate`` for ``identity`` within ``scope``."""
    return default_limiter().hit(
        scope,
        identity,
        rate,
        algorithm=algorithm,
        cost=cost,
        burst=burst,
        fail_mode=fail_mode,
    )


def acquire(
    scope,
    identity,
    rate,
    *,
    algorithm="gcra",
    cost=1,
    burst=None,
    timeout=None,
    fail_mode=None,
) -> Decision:
    """Wait until allowed or ``timeout`` seconds passed (see ``Limiter.acquire``)."""
    return default_limiter().acquire(
        scope,
        identity,
        rate,
        algorithm=algorithm,
        cost=cost,
        burst=burst,
        timeout=timeout,
        fail_mode=fail_mode,
    )


def peek(scope, identity, rate, *, algorithm="gcra", burst=None) -> Decision:
    """Whether a request of cost 1 would pass now; consumes nothing."""
    return default_limiter().peek(
        scope, identity, rate, algorithm=algorithm, burst=burst
    )


def reset(scope: str, identity: Identity) -> None:
    """Forget every algorithm's state for ``scope`` and ``identity``."""
    default_limiter().reset(scope, identity)


def hit_many(rules: Iterable[Rule], *, fail_mode=None) -> list[Decision]:
    """All-or-nothing: consume from every rule, or from none."""
    return default_limiter().hit_many(rules, fail_mode=fail_mode)


def peek_many(rules: Iterable[Rule]) -> list[Decision]:
    """Would every rule pass at its cost? Consumes nothing."""
    return default_limiter().peek_many(rules)


async def ahit(
    scope, identity, rate, *, algorithm="gcra", cost=1, burst=None, fail_mode=None
):
    return await default_limiter().ahit(
        scope,
        identity,
        rate,
        algorithm=algorithm,
        cost=cost,
        burst=burst,
        fail_mode=fail_mode,
    )


async def aacquire(
    scope,
    identity,
    rate,
    *,
    algorithm="gcra",
    cost=1,
    burst=None,
    timeout=None,
    fail_mode=None,
) -> Decision:
    return await default_limiter().aacquire(
        scope,
        identity,
        rate,
        algorithm=algorithm,
        cost=cost,
        burst=burst,
        timeout=timeout,
        fail_mode=fail_mode,
    )


async def apeek(scope, identity, rate, *, algorithm="gcra", burst=None):
    return await default_limiter().apeek(
        scope, identity, rate, algorithm=algorithm, burst=burst
    )


async def areset(scope: str, identity: Identity) -> None:
    await default_limiter().areset(scope, identity)


async def ahit_many(rules: Iterable[Rule], *, fail_mode=None) -> list[Decision]:
    return await default_limiter().ahit_many(rules, fail_mode=fail_mode)


async def apeek_many(rules: Iterable[Rule]) -> list[Decision]:
    return await default_limiter().apeek_many(rules)
