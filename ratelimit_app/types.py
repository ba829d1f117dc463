"""Typed values that cross module boundaries: ``Rule`` and ``Decision``."""

from __future__ import annotations

from dataclasses import dataclass, field

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

# Lua evaluates with IEEE doubles: keep every scaled quantity (capacity x
# period in ms) well inside the 2**53 range where integers are exact.
MAX_SCALED = 2**50

Identity = str | bytes | int


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit to evaluate: ``rate`` for ``identity`` within ``scope``.

    ``burst`` is the capacity of the bucket algorithms (default: the rate's
    limit). ``shadow`` rules are evaluated and reported but never block.
    """

    scope: str
    identity: Identity
    rate: Rate | str
    algorithm: str = "gcra"
    cost: int = 1
    burst: int | None = None
    shadow: bool = False
    _rate: Rate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rate", to_rate(self.rate))
        _check_rule(self)

    @property
    def parsed_rate(self) -> Rate:
        return self._rate

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self._rate.limit


def _check_rule(rule: Rule) -> None:
    if not isinstance(rule.scope, str) or not rule.scope:
        raise ValueError(f"scope must be a non-empty string, got {rule.scope!r}.")
    if not isinstance(rule.identity, str | bytes | int) or isinstance(
        rule.identity, bool
    ):
        raise TypeError(
            f"identity must be str, bytes or int, got {type(rule.identity).__name__}."
        )
    if rule.algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown algorithm {rule.algorithm!r}; choose one of "
            f"{', '.join(ALGORITHMS)}."
        )
    if not _positive_int(rule.cost):
        raise ValueError(f"cost must be a positive integer, got {rule.cost!r}.")
    _check_burst(rule)
    if rule.capacity * rule._rate.period_ms > MAX_SCALED:
        raise ValueError(
            f"Rate {rule.rate!r} with capacity {rule.capacity} is too large to "
            "evaluate exactly (capacity x period in ms must stay below 2**50): "
            "use a shorter period or a smaller limit."
        )


def _check_burst(rule: Rule) -> None:
    if rule.burst is None:
        return
    if not _positive_int(rule.burst):
        raise ValueError(f"burst must be a positive integer, got {rule.burst!r}.")
    if rule.algorithm in WINDOW_ALGORITHMS and rule.burst != rule._rate.limit:
        raise ValueError(
            f"burst applies to token_bucket, leaky_bucket and gcra; "
            f"{rule.algorithm} admits the rate's limit per window. Leave burst "
            "unset or pick a bucket algorithm."
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
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

    @property
    def blocking(self) -> bool:
        """True when this decision denies the request (shadow never blocks)."""
        return not self.allowed and not self.shadow
