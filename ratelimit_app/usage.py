"""The usage counter format in Redis, shared by the writer (engine) and the drain.

One live hash per shard, ``<prefix>{s<N>}:usage``, beside the limiter keys of
that shard (same hash tag, so the decision script can write it on Redis
Cluster). Its fields are ``<minute>|<scope>|<metric>``:

* ``minute``: ``floor(unix ms / 60000)`` as a decimal integer (Redis ``TIME``
  in the script);
* ``scope``: the policy name; it may itself contain ``|``, so a parser reads
  the minute from the left and the metric from the right;
* ``metric``: one of ``METRICS``, or ``u`` (an admission of cost 1: allowed
  and cost both grow by its value);

and their values are integers written with ``HINCRBY``. A decision call
whose rules share one identity and cost 1 each, all admitted, counts once for
them all: metric ``g`` (a ``u`` for each scope of the group), whose ``scope``
is a usage group: the scopes joined by ``GROUP_SEPARATOR``, which the drain
splits (only for ``g``: a scope on its own may hold the separator). Every
write also sets the hash's TTL (``USAGE_TTL``), so counters nobody drains
expire.

Beside it, in the same slot:

* ``<prefix>{s<N>}:usage:hll:<minute>|<scope>``: a HyperLogLog of the identity
  digests that made a decision under the scope in that minute (distinct
  clients; they do not add up, so the drain merges them, see aggregation and
  distinct); ``...:usage:hllg:<minute>|<group>`` the same for a usage group,
  which the drain merges into each of its scopes;
* ``<prefix>{s<N>}:usage:top``: a sorted set of denials per
  ``<minute>|<digest>|<label>|<scope>`` member (top offenders), capped at
  ``USAGE_OFFENDERS_PER_SHARD`` members by dropping the lowest.

The drain renames a live hash to ``<prefix>{s<N>}:usage:batch:<id>`` (and the
offenders set to ``...:batch:<id>:top``) and registers ``<id>`` in
``<prefix>{s<N>}:usage:batches``, all in the same slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import conf

# Field code -> model field. The engine writes the codes, the drain reads them.
METRICS = {"a": "allowed", "b": "blocked", "s": "shadow_blocked", "c": "cost"}
COUNTS = tuple(METRICS.values())
# "u" counts an admission of cost 1, which adds one to both "allowed" and
# "cost": one HINCRBY per decision instead of two (costlier admissions still
# write "a" and "c").
UNIT = "u"
# "g": a "u" for every scope of a usage group (see the module docstring).
GROUP_UNIT = "g"
FIELD_CODES = (*METRICS, UNIT, GROUP_UNIT)

# The largest minute a datetime can hold (9999-12-31 23:59 UTC).
MAX_MINUTE = 4_223_371_679
# Scopes are stored in a CharField of this length (UsageMinute.policy).
MAX_SCOPE_LENGTH = 255
# Identity digests (22 characters today) and labels, as UsageOffender stores them.
MAX_IDENTITY_LENGTH = 32
MAX_LABEL_LENGTH = 64

# Joins the scopes of a usage group (see the module docstring); a scope
# holding it is always counted on its own.
GROUP_SEPARATOR = "\x1f"

_COUNT_RE = re.compile(rb"\d{1,19}")
_MAX_COUNT = 2**63 - 1


def setting(name: str) -> Any:
    """A usage setting (defaults and comments live in ``conf.DEFAULTS``)."""
    return conf.get(name)


def live_key_of(limiter_key: str) -> str:
    """The live hash of the shard a limiter key belongs to (same hash tag).

    Limiter keys read ``<prefix>{s<N>}:...``, so this equals
    ``live_key(prefix, N)``.
    """
    return limiter_key[: limiter_key.index("}") + 1] + ":usage"


def ttl_seconds() -> int:
    """Seconds a live counter hash outlives its last write."""
    ttl = setting("USAGE_TTL")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 60:
        raise ImproperlyConfigured(
            f"RATELIMIT['USAGE_TTL'] = {ttl!r}: use whole seconds, at least 60 "
            "(default 604800, 7 days)."
        )
    return ttl


def offenders_per_shard() -> int:
    """Members the live offenders set of a shard keeps between two drains."""
    return _positive_setting("USAGE_OFFENDERS_PER_SHARD", 50)


def offenders_kept() -> int:
    """Offender rows the database keeps per policy and hour."""
    return _positive_setting("USAGE_OFFENDERS_KEPT", 100)


def _positive_setting(name: str, default: int) -> int:
    value = setting(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**6:
        raise ImproperlyConfigured(
            f"RATELIMIT[{name!r}] = {value!r}: use a whole number from 1 to "
            f"1000000 (default {default})."
        )
    return value


def shard_tag(prefix: str, shard: int) -> str:
    return f"{prefix}{{s{shard}}}"


def live_key(prefix: str, shard: int) -> str:
    """The hash the engine counts into, e.g. ``rl:1:{s417}:usage``."""
    return f"{shard_tag(prefix, shard)}:usage"


def batch_key(prefix: str, shard: int, batch_id: str) -> str:
    """A live hash after the drain renamed it, waiting to reach the database."""
    return f"{shard_tag(prefix, shard)}:usage:batch:{batch_id}"


def batches_key(prefix: str, shard: int) -> str:
    """The set of the shard's batch ids not yet deleted after recording."""
    return f"{shard_tag(prefix, shard)}:usage:batches"


def hll_key(
    prefix: str, shard: int, minute: int, scope: str, *, group: bool = False
) -> str:
    """A shard's distinct clients of one scope (or usage group) in one minute."""
    kind = "hllg" if group else "hll"
    return f"{live_key(prefix, shard)}:{kind}:{minute}|{scope}"


def top_key(prefix: str, shard: int) -> str:
    """A shard's live offenders set."""
    return f"{live_key(prefix, shard)}:top"


def batch_top_key(prefix: str, shard: int, batch_id: str) -> str:
    """A live offenders set after the drain renamed it with its batch."""
    return f"{batch_key(prefix, shard, batch_id)}:top"


def usage_group(scopes: list[str]) -> str:
    """The usage group of a call's scopes (two or more, none holding the
    separator), or "" when they are counted one by one."""
    if len(scopes) < 2 or any(GROUP_SEPARATOR in scope for scope in scopes):
        return ""
    return GROUP_SEPARATOR.join(scopes)


def encode_field(minute: int, scope: str, metric: str) -> str:
    if metric not in FIELD_CODES:
        raise ValueError(
            f"Unknown usage metric {metric!r}: use one of {', '.join(FIELD_CODES)}."
        )
    return f"{minute}|{scope}|{metric}"


@dataclass(frozen=True, slots=True)
class UsageField:
    minute: int
    scope: str  # a scope, or a usage group (``group``)
    metric: str  # the model field name, e.g. "allowed"; "unit" for "u" and "g"
    group: bool = False

    @property
    def scopes(self) -> list[str]:
        """The scopes its value counts for (each scope of a usage group)."""
        return scopes_of(self.scope, group=self.group)

    @property
    def counts(self) -> tuple[str, ...]:
        """The model fields its value adds to."""
        return ("allowed", "cost") if self.metric == "unit" else (self.metric,)


def scopes_of(scope: str, *, group: bool) -> list[str]:
    """The scopes a field's (or HyperLogLog's) scope part stands for."""
    return scope.split(GROUP_SEPARATOR) if group else [scope]


def minute_start(minute: int) -> datetime:
    """The start of a counter minute, as the database stores it (UTC)."""
    start = datetime.fromtimestamp(minute * 60, tz=UTC)
    return start if settings.USE_TZ else start.replace(tzinfo=None)


def minute_of(moment: datetime) -> int:
    """The counter minute of a stored datetime (naive ones are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) // 60


def parse_field(field: bytes | str) -> UsageField:
    """The parts of a field name; ``ValueError`` for anything unreadable."""
    text = field.decode("utf-8") if isinstance(field, bytes) else field
    minute, sep, rest = text.partition("|")
    scope, sep2, metric = rest.rpartition("|")
    if not (sep and sep2) or not minute.isascii() or not minute.isdigit():
        raise ValueError(f"not <minute>|<scope>|<metric>: {text!r}")
    if int(minute) > MAX_MINUTE:
        raise ValueError(f"minute out of range: {text!r}")
    if metric not in FIELD_CODES:
        raise ValueError(f"unknown metric {metric!r}: {text!r}")
    group = metric == GROUP_UNIT
    parsed = UsageField(int(minute), scope, METRICS.get(metric, "unit"), group)
    for member in parsed.scopes:
        check_scope(member)
    return parsed


def check_scope(scope: str) -> None:
    """``ValueError`` unless the scope fits the stats tables."""
    if not scope or len(scope) > MAX_SCOPE_LENGTH or "\x00" in scope:
        raise ValueError(f"scope empty, NUL or over {MAX_SCOPE_LENGTH} characters")


@dataclass(frozen=True, slots=True)
class Offence:
    minute: int
    identity: str  # the keyed hash of the identity, as in the limiter keys
    label: str  # safe to display; "" when nothing is
    scope: str


def parse_offence(member: bytes | str) -> Offence:
    """An offenders set member; ``ValueError`` for anything unreadable."""
    text = member.decode("utf-8") if isinstance(member, bytes) else member
    parts = text.split("|", 3)
    if len(parts) != 4:
        raise ValueError(f"not <minute>|<identity>|<label>|<scope>: {text!r}")
    minute, identity, label, scope = parts
    if not minute.isascii() or not minute.isdigit() or int(minute) > MAX_MINUTE:
        raise ValueError(f"bad minute: {text!r}")
    if not identity or len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"bad identity: {text!r}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label over {MAX_LABEL_LENGTH} characters: {text!r}")
    check_scope(scope)
    return Offence(int(minute), identity, label, scope)


def parse_score(value: float | bytes | str) -> int:
    """A sorted-set score as a count; ``ValueError`` unless a whole number >= 1."""
    number = float(value)
    if not number.is_integer() or not 1 <= number <= 2**53:
        raise ValueError(f"not a denial count: {value!r}")
    return int(number)


def parse_count(value: bytes | str) -> int:
    """A counter value; ``ValueError`` unless a non-negative 64-bit integer."""
    raw = value.encode() if isinstance(value, str) else value
    if not _COUNT_RE.fullmatch(raw) or int(raw) > _MAX_COUNT:
        raise ValueError(f"not a counter value: {value!r}")
    return int(raw)


def readable_pairs(pairs, parse_name, parse_value, batch, kind: str, log) -> list:
    """``(parse_name(name), parse_value(value))`` for each pair that parses.

    The others are skipped and logged in one warning (``kind`` names them,
    e.g. "field"); the caller counts them as ``len(pairs) - len(result)``.
    """
    readable, bad = [], []
    for name, value in pairs:
        try:
            readable.append((parse_name(name), parse_value(value)))
        except ValueError as exc:
            bad.append(f"{name!r}={value!r} ({exc})")
    if bad:
        log.warning(
            "usage batch %s: skipped %d unreadable %s(s), e.g. %s",
            batch,
            len(bad),
            kind,
            "; ".join(bad[:5]),
        )
    return readable


def queue_usage(
    pipe,
    shard: int,
    minute: int,
    scope: str,
    allowed: int = 0,
    blocked: int = 0,
    shadow_blocked: int = 0,
    cost: int = 0,
    *,
    prefix: str | None = None,
    ttl: int | None = None,
) -> None:
    """Queue on a pipeline the writes the engine makes for one decision."""
    key = live_key(prefix if prefix is not None else conf.key_prefix(), shard)
    for code, amount in zip(
        METRICS, (allowed, blocked, shadow_blocked, cost), strict=True
    ):
        if amount:
            pipe.hincrby(key, encode_field(minute, scope, code), amount)
    pipe.pexpire(key, (ttl if ttl is not None else ttl_seconds()) * 1000)


def record_usage(client, *args, **kwargs) -> None:
    """Count usage as the decision script does: ``HINCRBY`` and the TTL, one trip.

    Takes ``queue_usage``'s arguments. Tests and ``bench/usage.py`` use it to
    make many counts quickly without running decisions.
    """
    pipe = client.pipeline(transaction=False)
    queue_usage(pipe, *args, **kwargs)
    pipe.execute()
