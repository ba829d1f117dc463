"""Prometheus counters, when prometheus_client is installed and METRICS is on.

The counters sit on prometheus_client's default ``REGISTRY``, so a project's
existing ``/metrics`` endpoint exports them; ``metrics_view`` is one to wire in
otherwise. Labels never name a client: only policies, results, fallback modes,
operations and exception classes, so the number of series stays bounded.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound

from . import conf
from .local_usage import buffer

if TYPE_CHECKING:
    from .outcome import Outcome
    from .types import Decision

# The `result` label of ratelimit_decisions_total, one per policy and request.
ALLOWED = "allowed"  # the policy admitted the request
BLOCKED = "blocked"  # the policy denied it (limit reached, or cost too high)
SHADOW_BLOCKED = "shadow_blocked"  # a shadow policy would have denied it
NOT_CONSUMED = "not_consumed"  # the policy had room, another one blocked

DECISIONS = "ratelimit_decisions_total"
FALLBACKS = "ratelimit_fallback_activations_total"
REDIS_ERRORS = "ratelimit_redis_errors_total"

MISSING_MESSAGE = (
    "prometheus_client is not installed: `pip install prometheus_client` "
    "(or `pip install ratelimit-app[prometheus]`) to export metrics.\n"
)


class Counters(NamedTuple):
    decisions: Any  # prometheus_client.Counter; the import is optional
    fallbacks: Any
    redis_errors: Any


_UNKNOWN: Any = object()
# Counters, None (off: setting or package missing) or _UNKNOWN (look again).
_counters: Counters | None = _UNKNOWN
_lock = threading.Lock()


def counters() -> Counters | None:
    """The counters, or None when metrics are off; decided once per settings."""
    global _counters
    if _counters is _UNKNOWN:
        with _lock:
            if _counters is _UNKNOWN:
                _counters = _build() if conf.get("METRICS") else None
    return _counters


def forget(**kwargs) -> None:
    """Settings changed: look at METRICS and the package again on next use."""
    global _counters
    if _counters not in (None, _UNKNOWN):
        fold()  # into the counter of the settings they were made under
    _counters = _UNKNOWN
    _children.clear()


conf.on_change(forget)


def _build() -> Counters | None:
    try:
        import prometheus_client
    except ImportError:
        return None
    _register_folder(prometheus_client.REGISTRY)
    return Counters(
        _counter(
            prometheus_client,
            DECISIONS,
            "Rate limit decisions per policy and request, by result.",
            ("policy", "result"),
        ),
        _counter(
            prometheus_client,
            FALLBACKS,
            "Decisions taken by a policy's fail mode because Redis failed.",
            ("policy", "mode"),
        ),
        _counter(
            prometheus_client,
            REDIS_ERRORS,
            "Redis errors while deciding, by operation and exception class.",
            ("operation", "error"),
        ),
    )


def _register_folder(registry) -> None:
    """The folder on the registry, once per process, ahead of the counters
    (the registry collects in the order of registration)."""
    registered = getattr(registry, "_collector_to_names", {})
    if _folder not in registered:
        registry.register(_folder)


def _counter(prometheus_client, name: str, documentation: str, labels: tuple):
    """The counter on the default registry, created once per process.

    A second creation (settings changed, a reloaded module) would raise
    "Duplicated timeseries"; the registry keeps no public lookup by name.
    """
    registered = getattr(prometheus_client.REGISTRY, "_names_to_collectors", {})
    existing = registered.get(name)
    if existing is not None:
        return existing
    return prometheus_client.Counter(name, documentation, labels)


# -- recording (each one a no-op when metrics are off) -------------------------


def result_of(decision: Decision, request_blocked: bool) -> str:
    """The ``result`` label of one policy's decision for a request."""
    if not decision.allowed:
        return SHADOW_BLOCKED if decision.shadow else BLOCKED
    return NOT_CONSUMED if request_blocked else ALLOWED


def record_decisions(outcome: Outcome) -> None:
    """Count one result per policy of a request's outcome.

    Into a plain dict under one lock: ``fold`` adds it to the Prometheus
    counter when the registry is collected (a scrape, ``get_sample_value``)
    and once a second from the background thread, for the other processes
    of prometheus_client's multiprocess mode. A counter's own ``inc`` per
    policy costs more than the rest of a leased request's bookkeeping.
    """
    if not outcome.decisions or counters() is None:
        return
    blocked = outcome.blocked
    _count(
        [
            (policy.name, result_of(decision, blocked))
            for policy, decision in zip(
                outcome.policies, outcome.decisions, strict=True
            )
        ]
    )


def allowed_results(names: Sequence[str]) -> list[tuple[str, str]]:
    """What ``record_allowed`` counts for these policies (a lane keeps it)."""
    return [(name, ALLOWED) for name in names]


def record_allowed(results: list[tuple[str, str]]) -> None:
    """``record_decisions`` of an outcome whose every policy allowed (a
    lane's): ``allowed_results`` of its policies."""
    if counters() is not None:
        _count(results)


def _count(results: list[tuple[str, str]]) -> None:
    """One more decision per (policy, result), folded later (see ``fold``)."""
    with _pending_lock:
        for result in results:
            _pending[result] += 1
    if not _folding:
        _start_folding()


def fold() -> None:
    """Add the decisions counted since the last fold to the counter."""
    global _pending
    with _pending_lock:
        pending, _pending = _pending, Counter()
    found = counters()
    if found is None:
        return
    for (policy, result), count in pending.items():
        _decisions_child(found, policy, result).inc(count)


# (policy, result) -> decisions not yet in the counter (see record_decisions).
_pending: Counter = Counter()
_pending_lock = threading.Lock()
_folding = False  # fold() runs in this process's background thread


def _start_folding() -> None:
    global _folding
    buffer.every_flush(fold)  # its thread runs once a second
    buffer.start()
    _folding = True


def _after_fork_in_child() -> None:
    """The parent adds what it counted before the fork; the child starts a
    thread of its own on its first count."""
    global _pending, _pending_lock, _folding
    _pending, _pending_lock, _folding = Counter(), threading.Lock(), False


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Folder:
    """Collected before the counters (registered first): folds pending
    decisions, so a scrape in this process reads every decision made."""

    def describe(self) -> list:  # no names; and registering must not fold
        return []

    def collect(self) -> list:
        fold()
        return []


_folder = _Folder()


# (policy, result) -> the labelled counter: ``labels()`` takes a lock and
# builds a key on every call, which costs more than the increment itself.
_children: dict[tuple[str, str], Any] = {}
# Policies are few, but their names come from settings and the admin: bound
# the cache anyway; beyond it, labels() is asked each time.
MAX_CACHED_CHILDREN = 4096


def _decisions_child(found: Counters, policy: str, result: str):
    child = _children.get((policy, result))
    if child is None:
        child = found.decisions.labels(policy, result)
        if len(_children) < MAX_CACHED_CHILDREN:
            _children[(policy, result)] = child
    return child


def record_fallback(policy: str, mode: str) -> None:
    """Count a decision that policy's fail mode (open, closed, local) took."""
    found = counters()
    if found is not None:
        found.fallbacks.labels(policy, mode).inc()


def record_redis_error(operation: str, error: BaseException) -> None:
    """Count a Redis error by operation and exception class name."""
    found = counters()
    if found is not None:
        found.redis_errors.labels(operation, type(error).__name__).inc()


# -- exposition -----------------------------------------------------------------


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Every metric of the default registry (or of all processes in
    prometheus_client's multiprocess mode), in the format the scraper asks for.
    """
    try:
        import prometheus_client
        from prometheus_client import exposition, multiprocess
    except ImportError:
        return HttpResponseNotFound(
            MISSING_MESSAGE, content_type="text/plain; charset=utf-8"
        )
    registry = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
