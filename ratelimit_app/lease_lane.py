"""The leased lane: a request whose matched policies all lease plainly.

A policy leases plainly (``CompiledPolicy.plain_lease``) when it leases and
its rule is the same for every client: no exemptions, no tiers. A request
matched only by such policies needs nothing but its identities to be
admitted from this process's leases. A ``Plan`` per matched policy set keeps
everything else (the rules, the identity functions, the lease-table keys of
each identity seen), so the request costs its identities, one look-up under
the lease table's lock and its decisions: no rules built, no Redis call.

When a lease cannot cover the request (none yet, spent or expired) the lane
takes nothing and answers None; the usual path then decides, renewing the
lease in the same script call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from . import conf, limiter
from .headers import labels_of, state_item
from .leases import admit_all, lease_ids, table
from .outcome import Outcome

# Plans kept (matched policy sets) and lease-table keys kept per plan
# (identities); past either bound that cache starts afresh.
PLANS_MAX = 1024
IDENTITIES_MAX = 4096

NO_GROUPS: frozenset[str] = frozenset()


class Plan:
    """What every request of one plainly leased policy set needs: its rules,
    identity functions, lease-table keys per identity, and the parts of its
    RateLimit headers that do not change (None when the legacy X-RateLimit
    headers are on: ``headers`` builds them all)."""

    __slots__ = (
        "_identify",
        "_labels",
        "_lease_ids",
        "_policy_header",
        "names",
        "policies",
        "reads_user",
        "specs",
    )

    def __init__(self, policies: Sequence) -> None:
        self.policies = tuple(policies)
        self.names = tuple(p.name for p in policies)
        self.specs = tuple(p.rule_spec(NO_GROUPS) for p in policies)
        self.reads_user = any(p.reads_user for p in policies)
        self._identify = tuple(p.identify for p in policies)
        self._lease_ids: dict[tuple, list[tuple]] = {}
        self._policy_header = self._labels = None
        if not conf.get("LEGACY_HEADERS"):
            found = [
                labels_of(p.spec, s, s.capacity)
                for p, s in zip(policies, self.specs, strict=True)
            ]
            self._policy_header = ", ".join(item for item, _ in found)
            self._labels = [label for _, label in found]

    def admit(self, request) -> Outcome | None:
        """The request's outcome, every policy admitted from a live lease, or
        None with nothing taken."""
        identities = tuple([identify(request) for identify in self._identify])
        ids = self._lease_ids.get(identities)
        if ids is None:
            ids = self._remember(identities)
        decisions = admit_all(table, ids, self.specs)
        if decisions is None:
            return None
        outcome = Outcome(list(self.policies), decisions, list(self.specs))
        if self._labels is not None:
            outcome.headers = self._headers(decisions)
        return outcome

    def _headers(self, decisions) -> dict[str, str]:
        labels = self._labels
        if len(decisions) == 1:  # no list to join
            state = state_item(labels[0], decisions[0])
        else:
            pairs = zip(labels, decisions, strict=True)
            state = ", ".join([state_item(label, d) for label, d in pairs])
        return {"RateLimit-Policy": self._policy_header, "RateLimit": state}

    def _remember(self, identities: tuple) -> list[tuple]:
        """The lease-table keys of these identities (validating them)."""
        items = list(zip(self.specs, identities, strict=True))
        ids = lease_ids(limiter.default_limiter().state_keys(items), self.specs)
        if len(self._lease_ids) >= IDENTITIES_MAX:
            self._lease_ids.clear()
        self._lease_ids[identities] = ids
        return ids


# ids of a matched policy set -> (the policies, their Plan or None when
# some policy does not lease plainly). The entry holds the policies, so no
# id of its key is reused while it is kept.
_plans: dict[tuple, tuple] = {}
_lock = threading.Lock()


def admit(request, policies: Sequence) -> Outcome | None:
    """The request's outcome from the leases when its policies all lease
    plainly and their leases cover it; else None, nothing taken."""
    plan = plan_for(policies)
    return None if plan is None else plan.admit(request)


def plan_for(policies: Sequence) -> Plan | None:
    """The plan of a matched policy set; None when some policy does not
    lease plainly."""
    entry = _plans.get(tuple([id(policy) for policy in policies]))
    if entry is None:
        entry = _new_entry(policies)
    return entry[1]


def _new_entry(policies: Sequence) -> tuple:
    key = tuple([id(policy) for policy in policies])
    plan = Plan(policies) if all(p.plain_lease for p in policies) else None
    entry = (tuple(policies), plan)
    with _lock:
        if len(_plans) >= PLANS_MAX:
            _plans.clear()
        _plans[key] = entry
    return entry


def forget(**kwargs) -> None:
    """Settings changed (key prefix, secret, shards): plans start afresh."""
    with _lock:
        _plans.clear()


conf.on_change(forget)
