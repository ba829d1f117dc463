"""The policy snapshot: DB rows cached in Redis, merged with settings and code in each process.

Only the DB layer is shared through Redis: settings and ``@rate_limit`` code
defaults are per deploy, so each process merges its own (during a rolling
deploy, old and new code may declare different defaults).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from redis.exceptions import RedisError, ResponseError

from . import conf, deny_cache
from .backends.redis import get_async_client, get_client
from .policies import CompiledPolicy, PolicySpec, compile_all, compile_spec

logger = logging.getLogger("ratelimit_app")

SNAPSHOT_FORMAT = 1
_code_specs: dict[str, PolicySpec] = {}


def snapshot_keys() -> tuple[str, str]:
    """(version key, data key); one hash tag so a transaction fits a cluster slot."""
    base = f"{conf.key_prefix()}{{policies}}"
    return f"{base}:version", f"{base}:data"


def _version_keys() -> tuple[str, str]:
    """(version key, deny cache epoch key): one slot, read in one round trip."""
    return snapshot_keys()[0], deny_cache.epoch_key(conf.key_prefix())


def _queue_reads(pipe):
    """GET (not MGET: a key of the wrong type must say WRONGTYPE) both keys."""
    version_key, epoch = _version_keys()
    return pipe.get(version_key).get(epoch)


def register_code_policy(spec: PolicySpec, origin: str) -> None:
    """A code default (@rate_limit, a DRF throttle); settings and the admin
    override it. A mistake fails at import, prefixed with ``origin``."""
    try:
        compile_spec(spec)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{origin}: {exc}") from exc
    _code_specs[spec.name] = spec
    store.recompile()


def code_spec(name: str) -> PolicySpec | None:
    """The @rate_limit code default of that name, if any."""
    return _code_specs.get(name)


def settings_specs() -> list[PolicySpec]:
    specs = []
    for index, entry in enumerate(conf.get("POLICIES") or ()):
        try:
            specs.append(PolicySpec.from_dict(dict(entry), "settings"))
        except (TypeError, ValueError) as exc:
            logger.error(
                "ratelimit: RATELIMIT['POLICIES'][%d] is invalid: %s", index, exc
            )
    return specs


def db_specs() -> list[PolicySpec]:
    """Every Policy row as a spec (one query per table, prefetched)."""
    from .models import Policy

    rows = Policy.objects.prefetch_related("exemptions__group", "tiers__group")
    return [row_to_spec(row) for row in rows]


def row_to_spec(row) -> PolicySpec:
    exemptions = list(row.exemptions.all())
    return PolicySpec(
        name=row.name,
        rate=row.rate,
        key=row.key,
        algorithm=row.algorithm,
        burst=row.burst,
        cost=row.cost,
        lease=row.lease,
        enabled=row.enabled,
        mode=row.mode,
        priority=row.priority,
        url_name=row.url_name,
        view=row.view,
        path=row.path,
        path_regex=row.path_regex,
        methods=row.methods,
        fail_mode=row.fail_mode,
        fallback_rate=row.fallback_rate,
        status_code=row.status_code,
        message=row.message,
        description=row.description,
        exempt_networks=tuple(e.network for e in exemptions if e.network),
        exempt_users=tuple(e.user_id for e in exemptions if e.user_id is not None),
        exempt_groups=tuple(e.group.name for e in exemptions if e.group_id),
        exempt_staff=any(e.staff for e in exemptions),
        tiers=tuple((t.group.name, t.rate, t.burst) for t in row.tiers.all()),
        source="db",
    )


def encode(token: str, specs: list[PolicySpec]) -> str:
    policies = [spec.to_json() for spec in specs]
    return json.dumps({"format": SNAPSHOT_FORMAT, "token": token, "policies": policies})


def decode(raw: bytes | str) -> tuple[str, list[PolicySpec]]:
    """Parse a stored snapshot; ValueError when it is corrupt or foreign."""
    try:
        data = json.loads(raw)
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {data.get('format')!r}")
        token, policies = data["token"], data["policies"]
        if not isinstance(token, str) or not isinstance(policies, list):
            raise ValueError("token must be a string and policies a list")
        return token, [PolicySpec.from_dict(p, "db") for p in policies]
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise ValueError(f"corrupt policy snapshot: {exc}") from exc


def wrong_type(reply: object) -> bool:
    """A snapshot key holds a list, hash, ... (an accident): rebuild it."""
    return isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")


class PolicyStore:
    """The in-process copy, refreshed from Redis at most once per interval."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.db: list[PolicySpec] | None = None
        self.token: str | None = None
        self.compiled: tuple[CompiledPolicy, ...] = ()
        # The monotonic time of the next freshness check: the per-request
        # test is one clock read, not a settings lookup and a subtraction.
        # A settings change (the interval with it) resets it through forget().
        self.check_due = float("-inf")
        self.publish_pending = False

    # -- reading ---------------------------------------------------------------

    def policies(self) -> tuple[CompiledPolicy, ...]:
        """The merged, compiled policies; at most one Redis GET per interval."""
        if time.monotonic() < self.check_due and self.db is not None:
            return self.compiled
        with self._lock:
            if self._due():
                self._checked()
                self._refresh(self._read_version)
        return self.compiled

    async def apolicies(self) -> tuple[CompiledPolicy, ...]:
        """The async twin: the freshness check uses the asyncio client."""
        if not self._due():
            return self.compiled
        self._checked()
        started = deny_cache.now_ms()
        try:
            pipe = get_async_client().pipeline(transaction=False)
            version = self._observed(await _queue_reads(pipe).execute(False), started)
        except RedisError as exc:
            version = exc
        if self._is_current(version):
            return self.compiled
        await sync_to_async(self._refresh)(lambda: version)
        return self.compiled

    def _due(self) -> bool:
        return time.monotonic() >= self.check_due or self.db is None

    def _checked(self) -> None:
        """A check starts now: the next one is due an interval later."""
        self.check_due = time.monotonic() + conf.get("POLICY_REFRESH_INTERVAL")

    @staticmethod
    def _observed(replies: list, started: float):
        """Give the deny cache its epoch; return the version (or its error)."""
        version, epoch = replies
        if not isinstance(epoch, Exception):
            deny_cache.cache.observe(_version_keys()[1], epoch, started)
        return version

    def _is_current(self, version) -> bool:
        return (
            self.db is not None
            and not self.publish_pending
            and self.token is not None
            and version == self.token.encode()
        )

    def _read_version(self):
        """The version key, and the deny cache's epoch in the same MGET."""
        started = deny_cache.now_ms()
        try:
            pipe = get_client().pipeline(transaction=False)
            return self._observed(_queue_reads(pipe).execute(False), started)
        except RedisError as exc:
            return exc

    def _refresh(self, read_version) -> None:
        with self._lock:
            version = read_version()
            if self._is_current(version):
                return
            if wrong_type(version):
                logger.error("ratelimit: %s; rebuilding the policy snapshot", version)
                self.publish()
            elif isinstance(version, RedisError):
                self._on_redis_error(version)
            elif self.publish_pending or version is None:
                self.publish()  # Redis restarted empty, or an earlier publish failed
            else:
                self._load_from_redis()

    def _load_from_redis(self) -> None:
        """Version and data in one MGET (one slot), so a concurrent publish
        cannot pair one snapshot's version with another's data."""
        try:
            version, data = get_client().mget(snapshot_keys())
            if data is None:  # MGET gives None for a key of another type too
                raise ValueError("corrupt policy snapshot: no data string")
            token, specs = decode(data)
            if version != token.encode():
                raise ValueError(
                    f"policy snapshot {token!r} does not match its version key "
                    f"({(version or b'')[:40]!r})"
                )
        except ValueError as exc:
            logger.error("ratelimit: %s; rebuilding it from the database", exc)
            self.publish()
            return
        except RedisError as exc:
            self._on_redis_error(exc)
            return
        self._adopt(token, specs)

    def _on_redis_error(self, exc: RedisError) -> None:
        logger.warning("ratelimit: cannot read the policy snapshot from Redis: %s", exc)
        if self.db is None:  # nothing yet: serve the database's policies
            self._adopt(None, self._read_db() or [])

    # -- writing ---------------------------------------------------------------

    def publish(self) -> None:
        """Rebuild from the database, store in Redis and adopt locally."""
        with self._lock:
            specs = self._read_db()
            if specs is None:  # keep what we have; try again at the next check
                self.publish_pending = True
                if self.db is None:
                    self._adopt(None, [])
                return
            token = secrets.token_hex(8)
            version_key, data_key = snapshot_keys()
            try:
                pipe = get_client().pipeline(transaction=True)
                pipe.set(data_key, encode(token, specs))
                pipe.set(version_key, token)
                pipe.execute()
                self.publish_pending = False
            except RedisError as exc:
                logger.error(
                    "ratelimit: publishing the policy snapshot failed (%s); "
                    "retrying at the next refresh",
                    exc,
                )
                self.publish_pending = True
                token = None
            self._adopt(token, specs)

    def _read_db(self) -> list[PolicySpec] | None:
        """The database's policies, or None (logged) when it is unavailable."""
        try:
            return db_specs()
        except DatabaseError as exc:
            logger.error("ratelimit: cannot read policies from the database: %s", exc)
            return None

    def recompile(self) -> None:
        """Settings or code defaults changed: merge the layers again."""
        with self._lock:
            if self.db is not None:
                self._adopt(self.token, self.db)

    def _adopt(self, token: str | None, specs: list[PolicySpec]) -> None:
        layers = {
            "code": list(_code_specs.values()),
            "settings": settings_specs(),
            "db": specs,
        }
        self.compiled = compile_all(layers)
        self.db, self.token = specs, token
        deny_cache.cache.clear()  # a denial may come from an edited policy

    def forget(self) -> None:
        """Drop the local copy (settings changed); the next read reloads."""
        with self._lock:
            self.db, self.token, self.compiled = None, None, ()
            self.check_due = float("-inf")


store = PolicyStore()
conf.on_change(store.forget)


def get_policies() -> tuple[CompiledPolicy, ...]:
    return store.policies()


async def aget_policies() -> tuple[CompiledPolicy, ...]:
    return await store.apolicies()


def policy_by_name(name: str) -> CompiledPolicy | None:
    return next((p for p in store.policies() if p.name == name), None)
