"""Policies to and from JSON or YAML: export, and an idempotent import.

A file holds ``{"format": 1, "policies": [...]}``; each policy is the model's
fields plus its exemptions and tiers, users and groups by name, so a file moves
between databases. Import matches policies by name: each policy in the file
replaces the one of that name (fields left out take their defaults, exemptions
and tiers are replaced); policies not in the file are left alone.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction
from django.utils import timezone

from .actions import field_label
from .models import Exemption, Policy, Tier
from .snapshot import store

logger = logging.getLogger("ratelimit_app")

FILE_FORMAT = 1
FORMATS = ("json", "yaml")
SCALAR_FIELDS = (
    "name",
    "description",
    "enabled",
    "mode",
    "priority",
    "url_name",
    "view",
    "path",
    "path_regex",
    "methods",
    "key",
    "algorithm",
    "rate",
    "burst",
    "cost",
    "lease",
    "fail_mode",
    "fallback_rate",
    "status_code",
    "message",
)
ENTRY_FIELDS = (*SCALAR_FIELDS, "exemptions", "tiers")
EXEMPTION_KINDS = ("network", "user", "group", "staff")
TIER_FIELDS = ("group", "rate", "burst")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class PolicyFileError(ValueError):
    """A file that cannot be imported; each problem names where it is."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- export ------------------------------------------------------------------------


def export_policies() -> list[dict]:
    """Every Policy row as a dict, in evaluation order."""
    rows = Policy.objects.order_by("priority", "name").prefetch_related(
        "exemptions__user", "exemptions__group", "tiers__group"
    )
    return [
        policy_to_dict(row, list(row.exemptions.all()), list(row.tiers.all()))
        for row in rows
    ]


def policy_to_dict(policy: Policy, exemptions, tiers) -> dict:
    data: dict[str, Any] = {name: getattr(policy, name) for name in SCALAR_FIELDS}
    data["exemptions"] = sorted(
        (exemption_to_dict(e) for e in exemptions), key=_sort_key
    )
    data["tiers"] = sorted((tier_to_dict(t) for t in tiers), key=_sort_key)
    return data


def exemption_to_dict(exemption: Exemption) -> dict:
    if exemption.network:
        return {"network": exemption.network}
    if exemption.user is not None:
        return {"user": exemption.user.get_username()}
    if exemption.group is not None:
        return {"group": exemption.group.name}
    return {"staff": bool(exemption.staff)}


def tier_to_dict(tier: Tier) -> dict:
    return {"group": tier.group.name, "rate": tier.rate, "burst": tier.burst}


def _sort_key(item: dict) -> str:
    return json.dumps(item, sort_keys=True)


def dump(policies: list[dict], fmt: str) -> str:
    """The file's text in ``fmt`` (json or yaml)."""
    document = {"format": FILE_FORMAT, "policies": policies}
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# -- reading a file ------------------------------------------------------------------


def guess_format(path: str, fmt: str | None) -> str:
    """The given format, else the file's extension (.yaml/.yml), else json."""
    if fmt:
        return fmt
    return "yaml" if Path(path).suffix.lower() in (".yaml", ".yml") else "json"


def load(text: str, fmt: str) -> list:
    """The list of policy entries; PolicyFileError says the line or field."""
    try:
        document = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyFileError(
            [f"line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise PolicyFileError([f"{where}{exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise PolicyFileError([str(exc)]) from exc
    return _entries(document)


def _entries(document) -> list:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        found = type(document).__name__
        raise PolicyFileError(
            [f'expected a mapping with a "policies" list, found {found}']
        )
    unknown = sorted(set(document) - {"format", "policies"})
    if unknown:
        raise PolicyFileError([f"unknown top-level field(s): {', '.join(unknown)}"])
    version = document.get("format", FILE_FORMAT)
    if version != FILE_FORMAT:
        raise PolicyFileError(
            [f"format {version!r} is not supported (this version reads {FILE_FORMAT})"]
        )
    policies = document.get("policies")
    if not isinstance(policies, list):
        raise PolicyFileError(['"policies" must be a list of policies'])
    return policies


# -- import ----------------------------------------------------------------------------


@dataclass
class Change:
    """What an import does (or would do) to one policy."""

    name: str
    action: str  # "created", "updated" or "unchanged"
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # old, new


@dataclass
class _Prepared:
    change: Change
    policy: Policy
    exemptions: list[Exemption]
    tiers: list[Tier]
    old: dict | None


def import_policies(
    entries: list,
    *,
    dry_run: bool = False,
    actor=None,
    progress: Progress | None = None,
) -> list[Change]:
    """Check every entry, then create or update the policies that differ, in
    one transaction. Any problem raises PolicyFileError and writes nothing.
    With ``actor`` (a user), each write is recorded in the admin history.
    """
    with transaction.atomic():
        prepared = prepare(entries, progress)
        if not dry_run:
            changed = [p for p in prepared if p.change.action != "unchanged"]
            write(changed, actor, progress)
    return [p.change for p in prepared]


def prepare(entries: list, progress: Progress | None = None) -> list[_Prepared]:
    """Validate every entry as the admin would; collect every problem."""
    existing = {
        row.name: row
        for row in Policy.objects.prefetch_related(
            "exemptions__user", "exemptions__group", "tiers__group"
        )
    }
    problems: list[str] = []
    prepared: list[_Prepared] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        try:
            name = _entry_name(entry, index)
            if name in seen:
                raise PolicyFileError(
                    [
                        f'policy "{name}": appears twice (entries {seen[name]} and {index})'
                    ]
                )
            seen[name] = index
            prepared.append(_prepare_one(entry, existing.get(name)))
        except PolicyFileError as exc:
            problems += exc.problems
        if progress is not None:
            progress("checked", index + 1, len(entries))
    if problems:
        raise PolicyFileError(problems)
    return prepared


def _entry_name(entry, index: int) -> str:
    where = f"policies[{index}]"
    if not isinstance(entry, dict):
        raise PolicyFileError(
            [f"{where}: expected a mapping of fields, found {type(entry).__name__}"]
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyFileError([f"{where}: name: required (a non-empty string)"])
    return name


def _prepare_one(entry: dict, current: Policy | None) -> _Prepared:
    name = entry["name"]
    where = f'policy "{name}"'
    _check_fields(entry, where)
    old = None
    if current is not None:
        old_exemptions = list(current.exemptions.all())
        old = policy_to_dict(current, old_exemptions, list(current.tiers.all()))
    policy = Policy(pk=current.pk if current else None, created_at=None)
    if current is not None:
        policy.created_at = current.created_at
    for field_name in SCALAR_FIELDS:
        default = Policy._meta.get_field(field_name).get_default()
        setattr(policy, field_name, entry.get(field_name, default))
    problems = _clean(policy, where, entry, exclude=["created_at", "updated_at"])
    exemptions, more = _exemptions(policy, entry.get("exemptions", []), where)
    problems += more
    tiers, more = _tiers(policy, entry.get("tiers", []), where, bool(problems))
    problems += more
    if problems:
        raise PolicyFileError(problems)
    new = policy_to_dict(policy, exemptions, tiers)
    if old is None:
        change = Change(name, "created")
    else:
        diff = [(f, old[f], new[f]) for f in ENTRY_FIELDS if old[f] != new[f]]
        change = Change(name, "updated" if diff else "unchanged", diff)
    return _Prepared(change, policy, exemptions, tiers, old)


def _check_fields(entry: dict, where: str) -> None:
    """Unknown fields (with a suggestion) and wrong types, before the model's checks."""
    problems = []
    for name in sorted(set(entry) - set(ENTRY_FIELDS)):
        close = difflib.get_close_matches(name, ENTRY_FIELDS, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        problems.append(f'{where}: unknown field "{name}"{hint}')
    for name in SCALAR_FIELDS:
        if name in entry:
            problem = _type_problem(Policy._meta.get_field(name), entry[name])
            if problem:
                problems.append(f"{where}: {name} {show(entry[name])}: {problem}")
    if problems:
        raise PolicyFileError(problems)


def _type_problem(model_field: models.Field, value) -> str:
    if value is None:
        return "" if model_field.null else "must not be null"
    if isinstance(model_field, models.BooleanField):
        return "" if isinstance(value, bool) else "must be true or false"
    if isinstance(model_field, models.IntegerField):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return "" if ok else "must be an integer"
    if isinstance(model_field, models.CharField | models.TextField):
        return "" if isinstance(value, str) else "must be a string"
    return ""


def _clean(instance, where: str, given: dict, exclude=(), sep=": ") -> list[str]:
    """The model's own validation (what the admin runs), as messages naming
    the field (``where`` + ``sep`` + field) and the value given."""
    try:
        instance.full_clean(exclude=list(exclude), validate_unique=False)
    except ValidationError as exc:
        return _messages(exc, where, given, sep)
    return []


def _messages(exc: ValidationError, where: str, given: dict, sep: str) -> list[str]:
    problems = []
    for name, messages in exc.message_dict.items():
        if name == NON_FIELD_ERRORS:
            label = where
        elif name in given:
            label = f"{where}{sep}{name} {show(given[name])}"
        else:
            label = f"{where}{sep}{name}"
        problems += [f"{label}: {message}" for message in messages]
    return problems


def show(value) -> str:
    """A value as the file would spell it (JSON)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _exemptions(policy: Policy, items, where: str) -> tuple[list, list[str]]:
    if not isinstance(items, list):
        return [], [f"{where}: exemptions: must be a list"]
    exemptions, problems = [], []
    for index, item in enumerate(items):
        at = f"{where}: exemptions[{index}]"
        kinds = [k for k in EXEMPTION_KINDS if isinstance(item, dict) and k in item]
        if not isinstance(item, dict) or len(kinds) != 1 or len(item) != 1:
            problems.append(
                f"{at}: give exactly one of {', '.join(EXEMPTION_KINDS)}, e.g. "
                '{"network": "203.0.113.0/24"}'
            )
            continue
        kind, value = kinds[0], item[kinds[0]]
        try:
            exemption = Exemption(policy=policy, **{kind: _related(kind, value)})
        except LookupError as exc:
            problems.append(f"{at}.{kind} {show(value)}: {exc}")
            continue
        if kind == "staff" and value is not True:
            problems.append(f"{at}.staff {show(value)}: must be true")
            continue
        problems += _clean(exemption, at, item, exclude=["policy"], sep=".")
        exemptions.append(exemption)
    return exemptions, problems


def _related(kind: str, value):
    """A user (by username, or id) or a group (by name); other kinds as given."""
    if kind == "user":
        User = get_user_model()
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return User._default_manager.get(pk=value)
            return User._default_manager.get_by_natural_key(str(value))
        except User.DoesNotExist:
            raise LookupError("no such user") from None
    if kind == "group":
        group = Group.objects.filter(name=str(value)).first()
        if group is None:
            raise LookupError("no such group")
        return group
    if kind == "network" and not isinstance(value, str):
        raise LookupError("must be a string such as 203.0.113.0/24")
    return value


def _tiers(policy: Policy, items, where: str, skip_rates: bool):
    if not isinstance(items, list):
        return [], [f"{where}: tiers: must be a list"]
    tiers, problems, groups = [], [], set()
    for index, item in enumerate(items):
        at = f"{where}: tiers[{index}]"
        if not isinstance(item, dict) or not {"group", "rate"} <= set(item):
            problems.append(
                f'{at}: give group and rate, e.g. {{"group": "partners", "rate": "1000/m"}}'
            )
            continue
        unknown = sorted(set(item) - set(TIER_FIELDS))
        if unknown:
            problems.append(f"{at}: unknown field(s) {', '.join(unknown)}")
            continue
        try:
            group = _related("group", item["group"])
        except LookupError as exc:
            problems.append(f"{at}.group {show(item['group'])}: {exc}")
            continue
        if group.name in groups:
            problems.append(f'{at}.group "{group.name}": listed twice')
            continue
        groups.add(group.name)
        for name in ("rate", "burst"):
            problem = _type_problem(Tier._meta.get_field(name), item.get(name))
            if problem:
                problems.append(f"{at}.{name} {show(item.get(name))}: {problem}")
        tier = Tier(
            policy=policy, group=group, rate=item["rate"], burst=item.get("burst")
        )
        if not problems and not skip_rates:  # rates are checked against the policy
            problems += _clean(tier, at, item, exclude=["policy"], sep=".")
        tiers.append(tier)
    return tiers, problems


def write(
    prepared: list[_Prepared], actor=None, progress: Progress | None = None
) -> None:
    """Save the changed policies without a snapshot publish per row: one after commit."""
    now = timezone.now()
    created = [p for p in prepared if p.old is None]
    updated = [p for p in prepared if p.old is not None]
    for item in created:
        item.policy.created_at = item.policy.updated_at = now
    Policy.objects.bulk_create([p.policy for p in created])
    for item in updated:
        item.policy.updated_at = now
    Policy.objects.bulk_update(
        [p.policy for p in updated], [*SCALAR_FIELDS, "updated_at"], batch_size=500
    )
    names = [p.policy.name for p in prepared]
    ids = dict(Policy.objects.filter(name__in=names).values_list("name", "pk"))
    for index, item in enumerate(prepared):
        item.policy.pk = ids[item.policy.name]
        _replace_related(item)
        _record(item, actor)
        if progress is not None:
            progress("written", index + 1, len(prepared))
    transaction.on_commit(store.publish, robust=True)


def _replace_related(item: _Prepared) -> None:
    """Delete the exemptions and tiers that went away, add the new ones."""
    policy = item.policy
    old = item.old or {"exemptions": [], "tiers": []}
    new = policy_to_dict(policy, item.exemptions, item.tiers)
    if old["exemptions"] != new["exemptions"]:
        Exemption.objects.filter(policy=policy).delete()
        for exemption in item.exemptions:
            exemption.policy = policy
        Exemption.objects.bulk_create(item.exemptions)
    if old["tiers"] != new["tiers"]:
        Tier.objects.filter(policy=policy).delete()
        for tier in item.tiers:
            tier.policy = policy
        Tier.objects.bulk_create(item.tiers)


def _record(item: _Prepared, actor) -> None:
    change = item.change
    if change.action == "created":
        logger.info("ratelimit: import created policy %r", change.name)
    else:
        changed = ", ".join(f for f, _, _ in change.fields)
        logger.info("ratelimit: import updated policy %r (%s)", change.name, changed)
    if actor is None:
        return
    if change.action == "created":
        flag, message = ADDITION, [{"added": {}}]
    else:
        labels = [_label(f) for f, _, _ in change.fields]
        flag, message = CHANGE, [{"changed": {"fields": labels}}]
    LogEntry.objects.log_actions(actor.pk, [item.policy], flag, message)


def _label(name: str) -> str:
    if name == "exemptions":
        return "Exemptions"
    if name == "tiers":
        return "Tier overrides"
    return field_label(name)
