"""What the admin does to policies in bulk: switch, reset counters, log each change.

Plain functions, so tests and scripts call them without the admin. Bulk
updates go through ``queryset.update``, which sends no ``post_save``: every
helper here republishes the snapshot after commit itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone, translation
from django.utils.text import capfirst

from . import limiter
from .keys import ALGORITHM_CODES, STATE_HASH_SUFFIX, hash_fields, scope_part
from .models import Mode, Policy
from .snapshot import store
from .types import Identity

# Commands sent per pipeline while resetting a whole policy.
RESET_BATCH = 500
_CODES = frozenset(ALGORITHM_CODES.values())


def set_enabled(queryset, enabled: bool, user) -> int:
    """Enable or disable the policies; return how many changed."""
    return update_field(queryset, "enabled", enabled, user)


def set_mode(queryset, mode: str, user) -> int:
    """Switch the policies to ``enforce`` or ``shadow``; return how many changed."""
    return update_field(queryset, "mode", Mode(mode).value, user)


def update_field(queryset, field: str, value, user) -> int:
    """Set one field on the rows that differ, log each, publish after commit."""
    with transaction.atomic():
        changed = list(queryset.exclude(**{field: value}))
        if not changed:
            return 0
        Policy.objects.filter(pk__in=[p.pk for p in changed]).update(
            **{field: value, "updated_at": timezone.now()}
        )
        log_change(user, changed, [{"changed": {"fields": [field_label(field)]}}])
        transaction.on_commit(store.publish, robust=True)
    return len(changed)


def field_label(field: str) -> str:
    """The label the admin's own change messages use, stored untranslated."""
    with translation.override(None):
        return str(capfirst(Policy._meta.get_field(field).verbose_name))


def log_change(user, policies: Iterable[Policy], message: str | list) -> None:
    """One admin history entry per policy."""
    LogEntry.objects.log_actions(user.pk, list(policies), CHANGE, message)


# -- counters ------------------------------------------------------------------


def reset_policies(queryset, user) -> int:
    """Forget every client's counters of each policy; return how many were deleted.

    The keys hold hashed identities, so there is no list of clients to walk:
    this SCANs the keyspace for the policy's keys. That is O(keyspace) work
    spread over many small calls: fine for an admin action, never used on the
    request path.
    """
    total = 0
    for policy in queryset:
        deleted = delete_counters(policy.name)
        log_change(
            user,
            [policy],
            f"Reset the counters of every client ({deleted} deleted).",
        )
        total += deleted
    return total


def counter_pattern(prefix: str) -> str:
    """The SCAN pattern of every identity's keys (see keys.identity_base)."""
    return f"{prefix}{{s*}}:*"


def is_state_hash(key: str, prefix: str) -> bool:
    """Exactly ``<prefix>{s<n>}:<digest>:state``, nothing else."""
    parts = _parts(key, prefix)
    return (
        len(parts) == 3
        and parts[0].startswith("{s")
        and key.endswith(STATE_HASH_SUFFIX)
    )


def is_counter_key(key: str, prefix: str, scope: str) -> bool:
    """Exactly ``<prefix>{s<n>}:<digest>:<scope>:<algorithm>`` (a key of its
    own, see keys.OWN_KEY_ALGORITHMS), nothing else."""
    parts = _parts(key, prefix)
    return (
        len(parts) == 4
        and parts[0].startswith("{s")
        and parts[2] == scope_part(scope)
        and parts[3] in _CODES
    )


def _parts(key: str, prefix: str) -> list[str]:
    return key[len(prefix) :].split(":") if key.startswith(prefix) else []


def delete_counters(scope: str) -> int:
    """Delete every client's state of ``scope`` (its fields in each state
    hash, its own keys), in batches; return how many were deleted."""
    engine = limiter.default_limiter()
    client, prefix, fields = engine.client, engine.prefix, hash_fields(scope)
    deleted, pending = 0, 0
    pipe = client.pipeline(transaction=False)
    for raw in client.scan_iter(match=counter_pattern(prefix), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if is_state_hash(key, prefix):
            pipe.hdel(key, *fields)
        elif is_counter_key(key, prefix, scope):
            pipe.unlink(key)
        else:
            continue
        pending += 1
        if pending >= RESET_BATCH:
            deleted += _deleted(pipe)
            pending = 0
    if pending:
        deleted += _deleted(pipe)
    engine.forget_denials()
    return deleted


def _deleted(pipe) -> int:
    """Send the batch; a key of another type where a state hash goes (not
    this engine's) refuses its HDEL and counts nothing."""
    return sum(r for r in pipe.execute(raise_on_error=False) if isinstance(r, int))


def reset_client(name: str, identity: Identity, client_label: str, user) -> None:
    """Forget one client's counters of one policy and say so in the history.

    ``client_label`` is what the history shows (what the operator typed, never
    a raw identity that may be a secret such as an API key).
    """
    limiter.reset(name, identity)
    message = f"Reset the counters of client {client_label}."
    row = Policy.objects.filter(name=name).first()
    if row is not None:
        log_change(user, [row], message)
        return
    # A settings or code policy has no row: log against the model alone.
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(Policy),
        object_id=None,
        object_repr=name[:200],
        action_flag=CHANGE,
        change_message=message,
    )
