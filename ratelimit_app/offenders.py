"""Top offenders: denials per identity, from drained offender sets into the DB.

The decision script scores each denial in its shard's live offenders set
(members ``<minute>|<identity>|<label>|<scope>``, capped per shard, see
usage.py). The drain renames that set with the shard's counter hash, and
adds its scores here to ``UsageOffender`` rows per policy and hour, in the
same transaction as the counts, so they are exact for what the sets kept.
Each (policy, hour) then keeps only its ``USAGE_OFFENDERS_KEPT`` most denied
identities: a top list, bounded in size.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from . import usage
from .models import UsageOffender

logger = logging.getLogger("ratelimit_app")

ROWS_PER_QUERY = 500

# (policy, hour's first minute, identity) -> [label, denials]
Offences = dict[tuple[str, int, str], list]


def add_members(offences: Offences, batch, members: list[tuple]) -> int:
    """Add a batch's (member, score) pairs; returns how many were unreadable
    (skipped and logged)."""
    readable = usage.readable_pairs(
        members, usage.parse_offence, usage.parse_score, batch, "offender", logger
    )
    for offence, denials in readable:
        hour = offence.minute - offence.minute % 60
        entry = offences.setdefault((offence.scope, hour, offence.identity), ["", 0])
        entry[0] = offence.label or entry[0]
        entry[1] += denials
    return len(members) - len(readable)


def record(offences: Offences) -> None:
    """Add the denials to the hour rows and trim each touched (policy, hour)
    to its most denied identities. Runs inside the drain's transaction."""
    if not offences:
        return
    keys = sorted(offences)  # one lock order for every drain
    UsageOffender.objects.bulk_create(
        [
            UsageOffender(
                policy=p,
                hour=usage.minute_start(h),
                identity=i,
                label=offences[(p, h, i)][0],
            )
            for p, h, i in keys
        ],
        ignore_conflicts=True,
        batch_size=ROWS_PER_QUERY,
    )
    rows = []
    for row in _locked_rows(keys):
        label, denials = offences[(row.policy, usage.minute_of(row.hour), row.identity)]
        row.label = label or row.label
        row.blocked += denials
        rows.append(row)
    UsageOffender.objects.bulk_update(
        rows, ["label", "blocked"], batch_size=ROWS_PER_QUERY
    )
    _trim({(p, h) for p, h, _ in keys})


def _locked_rows(keys: list[tuple[str, int, str]]) -> list[UsageOffender]:
    identities = defaultdict(list)
    for policy, hour, identity in keys:
        identities[(policy, hour)].append(identity)
    rows = []
    for (policy, hour), names in sorted(identities.items()):
        for start in range(0, len(names), ROWS_PER_QUERY):
            rows += (
                UsageOffender.objects.select_for_update()
                .filter(
                    policy=policy,
                    hour=usage.minute_start(hour),
                    identity__in=names[start : start + ROWS_PER_QUERY],
                )
                .order_by("identity")
            )
    return rows


def _trim(periods: set[tuple[str, int]]) -> None:
    kept = usage.offenders_kept()
    for policy, hour in sorted(periods):
        beyond = (
            UsageOffender.objects.filter(policy=policy, hour=usage.minute_start(hour))
            .order_by("-blocked", "identity")
            .values_list("pk", flat=True)[kept:]
        )
        extra = list(beyond)
        if extra:
            UsageOffender.objects.filter(pk__in=extra).delete()
