"""Exceptions: RateLimitExceeded carries the outcome that blocked the request."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .outcome import Outcome


class RateLimitExceeded(Exception):
    """Raised (or passed to RATELIMIT['VIEW']) when a request is blocked."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        super().__init__(f"Rate limit exceeded: {', '.join(outcome.blocking_names)}")
