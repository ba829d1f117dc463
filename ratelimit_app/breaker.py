"""A per-process circuit breaker: after repeated Redis errors, stop calling Redis.

Closed: every call goes to Redis; errors are remembered for ``window`` seconds.
``threshold`` errors within the window open it: for ``cooldown`` seconds no
call goes to Redis (the fail modes decide at once). Then it is half-open: one
call probes Redis while the others still fall back; a success closes it, an
error opens it for another cool-down.

Cheap: while open, ``allow()`` reads two attributes and the monotonic clock,
without taking the lock. Thread-safe: transitions happen under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from . import conf

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        window: float,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.window, self.cooldown = threshold, window, cooldown
        self.clock = clock
        self.state = CLOSED
        self.opened_until = 0.0
        self._errors: deque[float] = deque()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> CircuitBreaker:
        return cls(
            conf.number("BREAKER_THRESHOLD"),
            conf.number("BREAKER_WINDOW"),
            conf.number("BREAKER_COOLDOWN"),
        )

    def allow(self) -> bool:
        """May this call go to Redis? (At most one probe when half-open.)"""
        if self.state == CLOSED:
            return True
        if self.clock() < self.opened_until:
            return False  # open, or half-open with a probe under way
        with self._lock:
            now = self.clock()
            if self.state != CLOSED and now >= self.opened_until:
                # This caller probes; a probe that never reports (an error
                # that was not Redis's) is replaced after another cool-down.
                self.state = HALF_OPEN
                self.opened_until = now + self.cooldown
                return True
            return self.state == CLOSED

    def retry_after(self) -> float:
        """Seconds until Redis will be tried again (a cool-down when closed)."""
        if self.state != CLOSED:
            return max(self.opened_until - self.clock(), 0.0) or self.cooldown
        return self.cooldown

    def record_success(self) -> None:
        if self.state == CLOSED and not self._errors:
            return
        with self._lock:
            self.state = CLOSED
            self._errors.clear()

    def record_failure(self) -> bool:
        """Count an error; True when this error opened the breaker."""
        with self._lock:
            now = self.clock()
            if self.state == HALF_OPEN:
                return self._open(now)
            if self.state == OPEN:
                return False
            self._errors.append(now)
            while self._errors and self._errors[0] <= now - self.window:
                self._errors.popleft()
            if len(self._errors) >= self.threshold:
                return self._open(now)
            return False

    def _open(self, now: float) -> bool:
        self.state = OPEN
        self.opened_until = now + self.cooldown
        self._errors.clear()
        return True
