"""Outcome: the decisions of one request, as the middleware and decorators share them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .limiter import RuleSpec
    from .policies import CompiledPolicy
    from .types import Decision


@dataclass(slots=True)  # made for every limited request: slots are cheaper
class Outcome:
    """The decisions for one request, in policy priority order."""

    policies: list[CompiledPolicy] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    # The rules applied (a group tier may replace a policy's own rate).
    specs: list[RuleSpec] = field(default_factory=list)
    # The RateLimit headers, when a lane built them with the decisions (see
    # lanes); else None and ``headers`` builds them.
    headers: dict[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def blocked(self) -> bool:
        # A loop, not any(genexpr): asked twice per request (metrics, middleware).
        for d in self.decisions:  # noqa: SIM110
            if not d.allowed and not d.shadow:
                return True
        return False

    @property
    def blocking(self) -> list[tuple[CompiledPolicy, Decision]]:
        return [
            (p, d)
            for p, d in zip(self.policies, self.decisions, strict=True)
            if d.blocking
        ]

    @property
    def blocking_names(self) -> list[str]:
        return [p.name for p, _ in self.blocking]

    @property
    def retry_after(self) -> float | None:
        """Seconds until every blocking policy would pass; None if never."""
        waits = [d.retry_after for _, d in self.blocking]
        if not waits or any(w is None for w in waits):
            return None
        return max(waits)

    def extend(self, other: Outcome) -> None:
        self.policies += other.policies
        self.decisions += other.decisions
        self.specs += other.specs
        self.headers = None  # they covered the first policies only

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.policies}
