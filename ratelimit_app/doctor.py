"""Operator diagnostics behind ``manage.py ratelimit_doctor``: one function per check.

Each check returns a ``Finding``: ``ok``, ``warn`` (works, but limits may not
mean what they say), ``fail`` (the limiter cannot work) or ``unknown`` (the
check itself was refused, e.g. CONFIG renamed by a managed Redis), with the
fix to apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from redis import exceptions
from redis.exceptions import RedisError, ResponseError

from . import conf
from .backends.redis import get_client
from .backends.topology import _redacted, is_cluster

OK, WARN, FAIL, UNKNOWN = "ok", "warn", "fail", "unknown"

# Limiter keys all carry a TTL, so volatile-* policies may evict them as
# readily as allkeys-* ones: only noeviction keeps every counter.
SAFE_EVICTION_POLICY = "noeviction"
MAX_CLOCK_SKEW = 1.0  # seconds
OLDEST_REDIS = (6, 2)
BEAT_TASKS = (
    "ratelimit_app.tasks.drain_usage",
    "ratelimit_app.tasks.rollup_usage",
    "ratelimit_app.tasks.prune_usage",
)
# Celery reads its Django settings under the CELERY_ namespace; old projects
# use CELERYBEAT_SCHEDULE.
BEAT_SETTINGS = ("CELERY_BEAT_SCHEDULE", "CELERYBEAT_SCHEDULE")


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    message: str
    fix: str = ""


class Fixes:
    """What to do about each problem; the tests reuse these."""

    CONNECTION = (
        "Start Redis or fix RATELIMIT['REDIS_URL'] (or the CACHES entry named "
        "by RATELIMIT['CACHE_ALIAS']): host, port, password, TLS (rediss://)."
    )
    OLD_REDIS = "Upgrade Redis to 6.2 or newer."
    SCRIPTING = (
        "Allow Lua scripts: grant the ACL user +@scripting (ACL SETUSER <user> "
        "+@scripting), and do not rename or disable EVAL, EVALSHA and SCRIPT."
    )
    EVICTION = (
        "CONFIG SET maxmemory-policy noeviction (and set it in redis.conf or "
        "your provider's parameter group), or give the limiter a Redis of its "
        "own with noeviction; then a full Redis refuses writes and each "
        "policy's fail_mode applies instead of counters silently vanishing."
    )
    EVICTION_UNKNOWN = (
        "Ask whoever runs Redis, or read your provider's parameter group: "
        "maxmemory-policy should be noeviction (or maxmemory 0)."
    )
    CLUSTER = (
        "Assign every hash slot to a reachable primary (redis-cli --cluster "
        "check <host:port>, then --cluster fix), or replace the failed nodes."
    )
    CLOCK = (
        "Synchronise the clocks of this host and the Redis host with NTP "
        "(chrony, systemd-timesyncd)."
    )
    BEAT = (
        "Schedule them with Celery beat, e.g. in settings: CELERY_BEAT_SCHEDULE "
        "= {'ratelimit-drain-usage': {'task': 'ratelimit_app.tasks.drain_usage', "
        "'schedule': 60.0}, 'ratelimit-rollup-usage': {'task': "
        "'ratelimit_app.tasks.rollup_usage', 'schedule': 300.0}, "
        "'ratelimit-prune-usage': {'task': 'ratelimit_app.tasks.prune_usage', "
        "'schedule': 86400.0}}, or as periodic tasks in django_celery_beat; "
        "or set RATELIMIT['COUNT_USAGE'] = False if you want no statistics."
    )


# -- Redis -------------------------------------------------------------------------


def target() -> str:
    """Where the limiter's Redis is configured, without its password."""
    url = conf.get("REDIS_URL")
    if url:
        return _redacted(url)
    return f"the django-redis cache {conf.get('CACHE_ALIAS')!r}"


def check_connection(client) -> Finding:
    """PING, and the server version when INFO is allowed."""
    try:
        client.ping()
    except RedisError as exc:
        return Finding(
            "connection", FAIL, f"cannot reach {target()}: {exc}", Fixes.CONNECTION
        )
    version = _server_version(client)
    if version is not None and version < OLDEST_REDIS:
        shown = ".".join(map(str, version))
        return Finding(
            "connection",
            WARN,
            f"{target()} runs Redis {shown}; ratelimit_app supports 6.2 and newer.",
            Fixes.OLD_REDIS,
        )
    return Finding("connection", OK, f"connected to {target()}")


def _server_version(client) -> tuple[int, ...] | None:
    try:
        info = client.info("server")
    except RedisError:  # INFO refused: the version is not essential
        return None
    if is_cluster(client) and "redis_version" not in info:
        info = next(iter(info.values()), {})  # one answer per node
    raw = str(info.get("redis_version", ""))
    parts = raw.split(".")[:2]
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def check_scripting(client) -> Finding:
    """EVAL and SCRIPT LOAD + EVALSHA of a trivial script, as the engine does."""
    try:
        evaluated = client.eval("return 1", 0)
        sha = client.script_load("return 2")
        loaded = client.evalsha(sha, 0)
    except RedisError as exc:
        return Finding(
            "scripting", FAIL, f"Lua scripts are refused: {exc}", Fixes.SCRIPTING
        )
    if (evaluated, loaded) != (1, 2):
        message = f"a trivial script returned {evaluated!r}, {loaded!r}, not 1, 2"
        return Finding("scripting", FAIL, message, Fixes.SCRIPTING)
    return Finding("scripting", OK, "EVAL and EVALSHA run Lua scripts")


def check_eviction(client) -> Finding:
    """Warn when Redis may evict limiter keys under memory pressure."""
    try:
        nodes = _config_per_node(client, "maxmemory*")
    except ResponseError as exc:  # ACL without +config, or CONFIG renamed
        message = f"could not check: CONFIG GET was refused ({exc})"
        return Finding("eviction", UNKNOWN, message, Fixes.EVICTION_UNKNOWN)
    risky = sorted(
        {
            node.get("maxmemory-policy", "?")
            for node in nodes
            if node.get("maxmemory-policy") != SAFE_EVICTION_POLICY
            and str(node.get("maxmemory", "0")) != "0"
        }
    )
    if not risky:
        return Finding(
            "eviction",
            OK,
            "limiter keys are never evicted (maxmemory-policy noeviction, or no "
            "maxmemory)",
        )
    return Finding("eviction", WARN, _eviction_message(risky), Fixes.EVICTION)


def _eviction_message(policies: list[str]) -> str:
    message = (
        f"maxmemory-policy {', '.join(policies)} with a maxmemory set: under "
        "memory pressure Redis evicts limiter keys, and an evicted counter "
        "forgets what a client used, so it admits more than the limit."
    )
    if any(p.startswith("volatile-") for p in policies):
        message += (
            " Every limiter key has a TTL, so volatile-* policies evict them "
            "as readily as allkeys-* ones."
        )
    return message


def _config_per_node(client, pattern: str) -> list[dict]:
    """CONFIG GET on every node (a cluster answers per node)."""
    if not is_cluster(client):
        return [client.config_get(pattern)]
    answer = client.config_get(pattern, target_nodes=client.ALL_NODES)
    if answer and all(isinstance(v, dict) for v in answer.values()):
        return list(answer.values())
    return [answer]


def check_cluster(client) -> Finding:
    """On Redis Cluster: every node answers, its state is ok, all slots served."""
    if not is_cluster(client):
        return Finding("cluster", OK, "not a Redis Cluster: no slots to cover")
    nodes = client.get_nodes()
    try:
        problems = [p for p in (_node_problem(client, n) for n in nodes) if p]
    except ResponseError as exc:  # refused by ACL, or renamed
        message = f"could not check: CLUSTER INFO was refused ({exc})"
        return Finding("cluster", UNKNOWN, message, Fixes.CLUSTER)
    if problems:
        return Finding("cluster", FAIL, "; ".join(problems), Fixes.CLUSTER)
    return Finding("cluster", OK, f"all {SLOTS} slots served ({len(nodes)} nodes)")


SLOTS = 16384


def _node_problem(client, node) -> str | None:
    """What is wrong as one node sees the cluster, or None."""
    try:
        info = client.cluster_info(target_nodes=node)
    except (exceptions.ConnectionError, exceptions.TimeoutError) as exc:
        return f"{node.name} does not answer ({exc})"
    if node.name in info and isinstance(info[node.name], dict):
        info = info[node.name]
    state, slots_ok = info.get("cluster_state"), int(info.get("cluster_slots_ok", 0))
    if state == "ok" and slots_ok == SLOTS:
        return None
    return f"{node.name}: cluster_state {state}, cluster_slots_ok {slots_ok} of {SLOTS}"


def check_clock(client, now: Callable[[], float] = time.time) -> Finding:
    """This host's clock against Redis TIME, allowing for the round trip."""
    try:
        before = now()
        seconds, microseconds = client.time()
        after = now()
    except ResponseError as exc:
        message = f"could not check: TIME was refused ({exc})"
        return Finding("clock", UNKNOWN, message, Fixes.CLOCK)
    skew = seconds + microseconds / 1e6 - (before + after) / 2
    if abs(skew) <= MAX_CLOCK_SKEW:
        return Finding("clock", OK, f"this host is {skew:+.3f} s from Redis TIME")
    return Finding(
        "clock",
        WARN,
        f"this host's clock is {skew:+.1f} s from Redis TIME. Decisions use "
        "Redis TIME only, so limits stay exact, but usage minutes are stamped "
        "with Redis time while the dashboard's ranges and pruning use this "
        "host's clock.",
        Fixes.CLOCK,
    )


REDIS_CHECKS = (check_scripting, check_eviction, check_cluster, check_clock)


# -- Celery beat -------------------------------------------------------------------


def check_beat_tasks() -> Finding:
    """The usage tasks are scheduled (settings or django_celery_beat)."""
    if not conf.get("COUNT_USAGE"):
        return Finding("beat", OK, "RATELIMIT['COUNT_USAGE'] is off: no tasks needed")
    scheduled = settings_beat_tasks() | database_beat_tasks()
    missing = [task for task in BEAT_TASKS if task not in scheduled]
    if not missing:
        return Finding("beat", OK, "Celery beat schedules the usage tasks")
    return Finding(
        "beat",
        WARN,
        f"Celery beat does not schedule {', '.join(missing)}: without "
        "drain_usage, live usage counts expire in Redis after "
        "RATELIMIT['USAGE_TTL'] and are lost; without rollup_usage there are "
        "no hour or day rows; without prune_usage the usage tables grow "
        "forever.",
        Fixes.BEAT,
    )


def settings_beat_tasks() -> set[str]:
    tasks = set()
    for name in BEAT_SETTINGS:
        schedule = getattr(settings, name, None)
        if isinstance(schedule, dict):
            tasks |= {
                entry.get("task")
                for entry in schedule.values()
                if isinstance(entry, dict)
            }
    return tasks


def database_beat_tasks() -> set[str]:
    """Enabled django_celery_beat periodic tasks, when that app is installed."""
    from django.apps import apps
    from django.db import DatabaseError

    if not apps.is_installed("django_celery_beat"):
        return set()
    from django_celery_beat.models import PeriodicTask

    try:
        rows = PeriodicTask.objects.filter(enabled=True, task__in=BEAT_TASKS)
        return set(rows.values_list("task", flat=True))
    except DatabaseError:
        return set()


# -- all together ------------------------------------------------------------------


def diagnose(connect: Callable = get_client) -> list[Finding]:
    """Every check; the Redis ones only when Redis answers."""
    client, connected = _connect(connect)
    findings = [connected]
    if connected.status != FAIL:
        findings += [_run(check, client) for check in REDIS_CHECKS]
    findings.append(check_beat_tasks())
    return findings


def _run(check: Callable[..., Finding], client) -> Finding:
    """A check; Redis failing midway (a node down, a timeout) is its finding."""
    try:
        return check(client)
    except RedisError as exc:
        name = check.__name__.removeprefix("check_")
        failed = f"Redis failed during the check: {exc}"
        return Finding(name, FAIL, failed, Fixes.CONNECTION)


def _connect(connect: Callable) -> tuple[object, Finding]:
    try:
        client = connect()  # a cluster client connects here already
    except (RedisError, OSError, ImproperlyConfigured) as exc:
        failed = f"cannot reach {target()}: {exc}"
        return None, Finding("connection", FAIL, failed, Fixes.CONNECTION)
    return client, check_connection(client)


def exit_code(findings: list[Finding]) -> int:
    """2 when something fails, 1 when something warns, else 0.

    ``unknown`` (a check that was refused) does not change the code: the
    message says what to check by hand.
    """
    statuses = {finding.status for finding in findings}
    return 2 if FAIL in statuses else 1 if WARN in statuses else 0


def render(finding: Finding) -> list[str]:
    """The lines printed for one finding."""
    lines = [f"[{finding.status}] {finding.check}: {finding.message}"]
    if finding.fix and finding.status != OK:
        lines.append(f"    fix: {finding.fix}")
    return lines
