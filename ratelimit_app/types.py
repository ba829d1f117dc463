"""Typed values that cross module boundaries: ``Rule`` and ``Decision``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from .rates import Rate, to_rate

ALGORITHMS = (
    "fixed_window",
    "sliding_window_log",
    "sliding_window_counter",
    "token_bucket",
    "leaky_bucket",
    "gcra",
)
WINDOW_ALGORITHMS = frozenset(
    {"fixed_window", "sliding_window_log", "sliding_window_counter"}
)
# The algorithms whose units a process may lease (see leases.py): their state
# can hand out k units at once and take unused ones back safely.
LEASE_ALGORITHMS = frozenset({"fixed_window", "token_bucket", "gcra"})

# Lua evaluates with IEEE doubles: keep every scaled quantity (capacity x
# period in ms) well inside the 2**53 range where integers are exact.
MAX_SCALED = 2**50

Identity = str | bytes | int


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit to evaluate: ``rate`` for ``identity`` within ``scope``.

    ``burst`` is the capacity of the bucket algorithms (default: the rate's
    limit). ``shadow`` rules are evaluated and reported but never block.
    ``lease`` lets each process take units in advance and admit from them
    locally (enforcing fixed_window, token_bucket and gcra rules; see leases).
    """

    scope: str
    identity: Identity
    rate: Rate | str
    algorithm: str = "gcra"
    cost: int = 1
    burst: int | None = None
    shadow: bool = False
    lease: bool = False
    _rate: Rate = field(init=False, repr=False, compare=False)
    capacity: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_identity(self.identity)
        try:
            rate, capacity = _checked_spec(
                self.scope, self.rate, self.algorithm, self.cost, self.burst
            )
        except TypeError:  # unhashable arguments: let the checks explain
            rate, capacity = _check_spec(
                self.scope, self.rate, self.algorithm, self.cost, self.burst
            )
        check_lease(self.lease, self.algorithm, self.shadow)
        object.__setattr__(self, "_rate", rate)
        object.__setattr__(self, "capacity", capacity)

    @property
    def parsed_rate(self) -> Rate:
        return self._rate


def check_identity(identity: object) -> Identity:
    if not isinstance(identity, str | bytes | int) or isinstance(identity, bool):
        raise TypeError(
            f"identity must be str, bytes or int, got {type(identity).__name__}."
        )
    return identity


def check_lease(lease: object, algorithm: str, shadow: bool) -> None:
    if not isinstance(lease, bool):
        raise TypeError(f"lease must be True or False, got {lease!r}.")
    if lease and algorithm not in LEASE_ALGORITHMS:
        raise ValueError(
            f"lease applies to {', '.join(sorted(LEASE_ALGORITHMS))}; "
            f"{algorithm} cannot hand out units in advance. Turn lease off or "
            "pick one of those algorithms."
        )
    if lease and shadow:
        raise ValueError(
            "A shadow rule cannot lease (it never consumes); turn lease off."
        )


def _check_spec(
    scope: str, rate: Rate | str, algorithm: str, cost: int, burst: int | None
) -> tuple[Rate, int]:
    """Validate everything but the identity; return (rate, capacity)."""
    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty string, got {scope!r}.")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}."
        )
    if not _positive_int(cost):
        raise ValueError(f"cost must be a positive integer, got {cost!r}.")
    parsed = to_rate(rate)
    _check_burst(algorithm, burst, parsed)
    capacity = parsed.limit if burst is None else burst
    if capacity * parsed.period_ms > MAX_SCALED:
        raise ValueError(
            f"Rate {rate!r} with capacity {capacity} is too large to "
            "evaluate exactly (capacity x period in ms must stay below 2**50): "
            "use a shorter period or a smaller limit."
        )
    return parsed, capacity


# Rules repeat the same few specs; validate each once. `typed` keeps True
# apart from 1.
_checked_spec = lru_cache(maxsize=4096, typed=True)(_check_spec)


def _check_burst(algorithm: str, burst: int | None, rate: Rate) -> None:
    if burst is None:
        return
    if not _positive_int(burst):
        raise ValueError(f"burst must be a positive integer, got {burst!r}.")
    if algorithm in WINDOW_ALGORITHMS and burst != rate.limit:
        raise ValueError(
            f"burst applies to token_bucket, leaky_bucket and gcra; "
            f"{algorithm} admits the rate's limit per window. Leave burst "
            "unset or pick a bucket algorithm."
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True, init=False)
class Decision:
    """The outcome of one rule.

    ``remaining`` and ``reset_after`` describe the state after this decision.
    ``retry_after`` is 0 when allowed and None when the cost can never pass.
    ``reason`` is ``"ok"``, ``"limit"``, ``"cost_exceeds_capacity"`` or
    ``"not_consumed"`` (this rule had room, but another rule of the same call
    blocked, so nothing was consumed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None
    scope: str
    reason: str = "ok"
    shadow: bool = False

    # Written by hand: a frozen dataclass's own __init__ goes through
    # object.__setattr__ per field, twice the cost, and one or more Decisions
    # are made for every limited request.
    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after: float,
        retry_after: float | None,
        scope: str,
        reason: str = "ok",
        shadow: bool = False,
    ) -> None:
        _set_allowed(self, allowed)
        _set_limit(self, limit)
        _set_remaining(self, remaining)
        _set_reset_after(self, reset_after)
        _set_retry_after(self, retry_after)
        _set_scope(self, scope)
        _set_reason(self, reason)
        _set_shadow(self, shadow)

    @property
    def blocking(self) -> bool:
        """True when this decision denies the request (shadow never blocks)."""
        return not self.allowed and not self.shadow


# The slots' own setters, which a frozen class's __setattr__ does not guard.
(
    _set_allowed,
    _set_limit,
    _set_remaining,
    _set_reset_after,
    _set_retry_after,
    _set_scope,
    _set_reason,
    _set_shadow,
) = (
    Decision.__dict__[name].__set__
    for name in (
        "allowed",
        "limit",
        "remaining",
        "reset_after",
        "retry_after",
        "scope",
        "reason",
        "shadow",
    )
)
