"""The lanes: requests whose matched policies are all plain.

A policy is plain (``CompiledPolicy.plain``) when its rule is the same for
every client: no exemptions, no tiers. A request matched only by plain
policies needs nothing but its identities, so a ``Plan`` per matched policy
set keeps everything else: the rules, the identity functions, what each
identity seen needs, and the parts of the RateLimit headers that never
change. Two lanes:

* leased (every policy leases): the lease-table keys per identity; a
  request costs its identities, one look-up under the lease table's lock
  and its decisions: no rules built, no Redis call. When a lease cannot
  cover the request (none yet, spent or expired) the lane takes nothing and
  answers None; the usual path then decides, renewing the lease in the same
  script call.
* called (no policy leases): the engine call, prepared and encoded per
  identity; a request costs its identities, that one script call (through
  the deny cache and the fail modes, as ``Limiter.decide``) and its
  decisions.

Anything else (a policy with exemptions or tiers, leased and unleased
policies together) takes the usual path: ``enforcement.check``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from . import conf, limiter, metrics
from .backends.topology import is_cluster
from .headers import labels_of, state_item
from .leases import admit_all, lease_ids, table
from .outcome import Outcome

# Plans kept (matched policy sets) and lease-table keys kept per plan
# (identities); past either bound that cache starts afresh.
PLANS_MAX = 1024
IDENTITIES_MAX = 4096

NO_GROUPS: frozenset[str] = frozenset()


class Plan:
    """What every request of one plain policy set needs: its rules, identity
    functions, per identity its lease-table keys (``leased``) or its prepared
    engine call, and the parts of its RateLimit headers that do not change
    (None when the legacy X-RateLimit headers are on or a policy is in shadow
    mode: ``headers`` builds them all)."""

    __slots__ = (
        "_calls",
        "_identify",
        "_labels",
        "_lease_ids",
        "_policy_header",
        "_spread",
        "allowed_results",
        "fail_modes",
        "leased",
        "policies",
        "reads_user",
        "specs",
    )

    def __init__(self, policies: Sequence, *, leased: bool) -> None:
        self.policies = tuple(policies)
        self.leased = leased
        self.allowed_results = metrics.allowed_results([p.name for p in policies])
        self.specs = tuple(p.rule_spec(NO_GROUPS) for p in policies)
        self.fail_modes = [p.fallback for p in policies]
        self.reads_user = any(p.reads_user for p in policies)
        # Each distinct identity function once (policies keyed alike share
        # one), and where each policy finds its identity among their values.
        self._identify = tuple(dict.fromkeys(p.identify for p in policies))
        self._spread = tuple(self._identify.index(p.identify) for p in policies)
        self._lease_ids: dict[tuple, list[tuple]] = {}
        self._calls: dict[tuple, tuple] = {}
        self._policy_header = self._labels = None
        shadow = any(p.shadow for p in policies)  # left out of the headers
        if not conf.get("LEGACY_HEADERS") and not shadow:
            found = [
                labels_of(p.spec, s, s.capacity)
                for p, s in zip(policies, self.specs, strict=True)
            ]
            self._policy_header = ", ".join(item for item, _ in found)
            self._labels = [label for _, label in found]

    def run(self, request) -> Outcome | None:
        """The request's outcome through this plan's lane; None when the lane
        cannot decide it (nothing taken, nothing asked)."""
        return self.admit(request) if self.leased else self.decide(request)

    async def arun(self, request) -> Outcome | None:
        """The asyncio twin of ``run``; the caller makes sure no identity
        reads ``request.user`` (``reads_user``), which is sync."""
        return self.admit(request) if self.leased else await self.adecide(request)

    def admit(self, request) -> Outcome | None:
        """The request's outcome, every policy admitted from a live lease, or
        None with nothing taken (leased plans only)."""
        identities = self._identities(request)
        ids = self._lease_ids.get(identities)
        if ids is None:
            ids = self._remember(identities)
        decisions = admit_all(table, ids, self.specs)
        if decisions is None:
            return None
        return self._outcome(decisions)

    def decide(self, request) -> Outcome | None:
        """The request's outcome from one engine call, prepared once per
        identity (plans that do not lease); None when this limiter cannot
        keep a call prepared (see ``_prepare``)."""
        found = self._call_of(request)
        if found is None:
            return None
        engine, items, call = found
        return self._outcome(engine.decide_prepared(items, call, self.fail_modes))

    async def adecide(self, request) -> Outcome | None:
        """The asyncio twin of ``decide``."""
        found = self._call_of(request)
        if found is None:
            return None
        engine, items, call = found
        decisions = await engine.adecide_prepared(items, call, self.fail_modes)
        return self._outcome(decisions)

    def _call_of(self, request) -> tuple | None:
        """(limiter, items, prepared call) of the request's identities, kept
        per identity for the current limiter (see ``_prepare``)."""
        identities = self._identities(request)
        engine = limiter.default_limiter()
        found = self._calls.get(identities)
        if found is None or found[0] is not engine:
            found = self._prepare(engine, identities)
        return found

    def _identities(self, request) -> tuple:
        """Each policy's identity of the request, in policy order."""
        if len(self._identify) == 1:
            return (self._identify[0](request),) * len(self._spread)
        values = [identify(request) for identify in self._identify]
        return tuple([values[index] for index in self._spread])

    def _outcome(self, decisions) -> Outcome:
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

    def _prepare(self, engine, identities: tuple) -> tuple | None:
        """(limiter, items, prepared call) of these identities, kept; None
        with a test clock (its call changes with the time) or when the
        identities differ on Redis Cluster (one call per identity's slot)."""
        if engine.clock is not None:
            return None
        if len(set(identities)) > 1 and is_cluster(engine.client):
            return None
        items = list(zip(self.specs, identities, strict=True))
        found = (engine, items, engine.prepared(items, "hit"))
        if len(self._calls) >= IDENTITIES_MAX:
            self._calls.clear()
        self._calls[identities] = found
        return found

    def _remember(self, identities: tuple) -> list[tuple]:
        """The lease-table keys of these identities (validating them)."""
        items = list(zip(self.specs, identities, strict=True))
        ids = lease_ids(limiter.default_limiter().state_keys(items), self.specs)
        if len(self._lease_ids) >= IDENTITIES_MAX:
            self._lease_ids.clear()
        self._lease_ids[identities] = ids
        return ids


# ids of a matched policy set -> (the policies, their Plan or None when
# some policy is not plain, or some lease and some do not). The entry holds
# the policies, so no id of its key is reused while it is kept.
_plans: dict[tuple, tuple] = {}
_lock = threading.Lock()


def run(request, policies: Sequence) -> Outcome | None:
    """The request's outcome through its plan's lane (``Plan.run``); None
    when the policies have no plan or the lane cannot decide."""
    plan = plan_for(policies)
    return None if plan is None else plan.run(request)


async def arun(request, policies: Sequence) -> Outcome | None:
    """The asyncio twin of ``run``, for policies whose keys do not read
    ``request.user``."""
    plan = plan_for(policies)
    return None if plan is None else await plan.arun(request)


def plan_for(policies: Sequence) -> Plan | None:
    """The plan of a matched policy set; None when some policy is not plain,
    or only some lease."""
    key = tuple([id(policy) for policy in policies])
    entry = _plans.get(key)
    if entry is None:
        entry = _new_entry(key, policies)
    return entry[1]


def _new_entry(key: tuple, policies: Sequence) -> tuple:
    plan = None
    if all(p.plain_lease for p in policies):
        plan = Plan(policies, leased=True)
    elif all(p.plain and not p.leases for p in policies):
        plan = Plan(policies, leased=False)
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
