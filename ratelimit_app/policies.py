"""Policy specs from any source, compiled for matching a request; pure, no I/O."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property, lru_cache
from typing import Any

from . import identity
from .fallback import DEFAULT, Fallback, fallback_of
from .limiter import RuleSpec, spec_of
from .rates import Rate, to_rate
from .types import Rule, check_lease

logger = logging.getLogger("ratelimit_app")

SOURCES = ("code", "settings", "db")  # later sources override earlier ones
# Key types that read request.user (a database query the first time).
USER_KEYS = ("user", "user_or_ip")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def split_methods(value: str) -> list[str]:
    return [m.strip().upper() for m in value.split(",") if m.strip()]


@dataclass(frozen=True)
class PolicySpec:
    """A policy as plain data: the JSON form in the snapshot, one per name."""

    name: str
    rate: str
    key: str = "ip"
    algorithm: str = "gcra"
    burst: int | None = None
    cost: int = 1
    # Each process leases a batch of units and admits from it locally
    # (fixed_window, token_bucket, gcra); a shadow policy never leases.
    lease: bool = False
    enabled: bool = True
    mode: str = "enforce"
    priority: int = 100
    url_name: str = ""
    view: str = ""
    path: str = ""
    path_regex: str = ""
    methods: str = ""
    # "open", "closed" or "local"; blank: RATELIMIT['FAIL_MODE'].
    fail_mode: str = ""
    # The "local" fail mode's rate; blank: the policy's own rate.
    fallback_rate: str = ""
    status_code: int = 429
    message: str = ""
    description: str = ""
    # Exemptions: IP/CIDR strings, user primary keys, group names, all staff.
    exempt_networks: tuple[str, ...] = ()
    exempt_users: tuple[Any, ...] = ()
    exempt_groups: tuple[str, ...] = ()
    exempt_staff: bool = False
    # Tier overrides: (group name, rate, burst or None).
    tiers: tuple[tuple[str, str, int | None], ...] = ()
    source: str = "settings"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> PolicySpec:
        """Build from a settings or snapshot dict; unknown fields are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        _check_types(data)
        values = {**data, "source": source}
        for name in ("exempt_networks", "exempt_users", "exempt_groups"):
            values[name] = tuple(values.get(name) or ())
        values["tiers"] = tuple(
            (str(g), str(r), b) for g, r, b in (values.get("tiers") or ())
        )
        return cls(**values)


_STR_FIELDS = frozenset(
    [
        "name",
        "rate",
        "key",
        "algorithm",
        "mode",
        "url_name",
        "view",
        "path",
        "path_regex",
        "methods",
        "fail_mode",
        "fallback_rate",
        "message",
        "description",
    ]
)
_INT_FIELDS = frozenset({"cost", "priority", "status_code", "burst"})
_BOOL_FIELDS = frozenset({"enabled", "exempt_staff", "lease"})
_LIST_FIELDS = frozenset({"exempt_networks", "exempt_users", "exempt_groups", "tiers"})


def _check_types(data: dict) -> None:
    """Refuse wrong types early: a string where a list belongs would split."""
    for name, value in data.items():
        if name == "burst" and value is None:
            continue
        if name in _STR_FIELDS and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, not {type(value).__name__}")
        if name in _INT_FIELDS and (
            not isinstance(value, int) or isinstance(value, bool)
        ):
            raise ValueError(f"{name} must be an integer, not {value!r}")
        if name in _BOOL_FIELDS and not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")
        if name in _LIST_FIELDS and not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, not {type(value).__name__}")


@dataclass(frozen=True)
class Tier:
    group: str
    rate: Rate
    burst: int | None


@dataclass(frozen=True)
class CompiledPolicy:
    """A validated policy, ready to match requests and build engine rules."""

    spec: PolicySpec
    rate: Rate
    methods: frozenset[str]
    path_re: re.Pattern | None
    path_regex: re.Pattern | None
    networks: tuple = ()
    tiers: tuple[Tier, ...] = ()
    identify: Any = field(default=None, repr=False)
    # What the policy does when Redis fails (mode "" is RATELIMIT['FAIL_MODE']).
    fallback: Fallback = DEFAULT

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shadow(self) -> bool:
        return self.spec.mode == "shadow"

    @property
    def leases(self) -> bool:
        """True when processes lease units of this policy (never in shadow mode)."""
        return self.spec.lease and not self.shadow

    @property
    def routed(self) -> bool:
        """True when the policy has a route matcher (used by the middleware)."""
        s = self.spec
        return bool(s.url_name or s.view or s.path or s.path_regex)

    def matches_method(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def matches_route(self, path: str, url_name: str | None, view: str | None) -> bool:
        s = self.spec
        return bool(
            (s.url_name and url_name == s.url_name)
            or (s.view and view == s.view)
            or (self.path_re and self.path_re.fullmatch(path))
            or (self.path_regex and self.path_regex.search(path))
        )

    def needs_groups(self) -> bool:
        return bool(self.spec.exempt_groups or self.tiers)

    # The properties below are asked on every request and never change for a
    # compiled policy: computed once (a frozen dataclass keeps a __dict__).

    @cached_property
    def reads_user(self) -> bool:
        """True when building its rule reads request.user."""
        s = self.spec
        return bool(
            s.key in USER_KEYS
            or s.exempt_staff
            or s.exempt_users
            or self.needs_groups()
        )

    @cached_property
    def exempts(self) -> bool:
        """True when some client may be exempt (staff, users, groups, networks)."""
        s = self.spec
        return bool(
            s.exempt_staff or s.exempt_users or s.exempt_groups or self.networks
        )

    @cached_property
    def plain(self) -> bool:
        """True when the policy's rule is the same for every client, none
        exempt: a request needs only its identity (``lanes``)."""
        return not self.exempts and not self.tiers

    @cached_property
    def plain_lease(self) -> bool:
        """True when the policy is plain and leases: a request needs only its
        identity to be admitted from a lease (``lanes``)."""
        return self.leases and self.plain

    def is_exempt(self, ip: str, user, groups: frozenset[str]) -> bool:
        if not self.exempts:
            return False
        s = self.spec
        if s.exempt_staff and user is not None and getattr(user, "is_staff", False):
            return True
        if s.exempt_users and user is not None and user.pk in s.exempt_users:
            return True
        if groups & set(s.exempt_groups):
            return True
        return bool(self.networks) and _in_networks(ip, self.networks)

    @cached_property
    def _own_spec(self) -> RuleSpec:
        return spec_of(
            self.name,
            self.rate,
            self.spec.algorithm,
            self.spec.cost,
            self.spec.burst,
            self.shadow,
            self.leases,
        )

    def rule_spec(self, groups: frozenset[str], cost: int | None = None) -> RuleSpec:
        """The engine rule (but its identity); a tier rate for group members.

        Validated and cached: the common case (no tiers, the policy's own
        cost) is an attribute read, not an lru_cache lookup hashing a Rate.
        """
        if cost is None and not self.tiers:
            return self._own_spec
        rate, burst = self.rate, self.spec.burst
        tier = self._best_tier(groups) if self.tiers else None
        if tier is not None:
            rate, burst = tier.rate, tier.burst
        if cost is None:
            cost = self.spec.cost
        return spec_of(
            self.name, rate, self.spec.algorithm, cost, burst, self.shadow, self.leases
        )

    def _best_tier(self, groups: frozenset[str]) -> Tier | None:
        """The most generous tier among the client's groups."""
        candidates = [t for t in self.tiers if t.group in groups]
        if not candidates:
            return None
        return max(candidates, key=lambda t: t.rate.limit / t.rate.period_ms)


def _in_networks(ip: str, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("/")[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


@lru_cache(maxsize=1024)
def glob_to_regex(glob: str) -> re.Pattern:
    """`*` matches any characters, `/` included; everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")))


def compile_spec(spec: PolicySpec) -> CompiledPolicy:
    """Validate and compile; raise ValueError saying what is wrong."""
    # The engine's own checks: rate, algorithm, burst, cost.
    rule = Rule(spec.name, "x", spec.rate, spec.algorithm, spec.cost, spec.burst)
    # Shadow is not passed: a shadow policy compiles with its lease left off.
    check_lease(spec.lease, spec.algorithm, False)
    methods = split_methods(spec.methods)
    bad = [m for m in methods if m not in HTTP_METHODS]
    if bad:
        raise ValueError(f"unknown HTTP method(s) {', '.join(bad)}")
    if spec.mode not in ("enforce", "shadow"):
        raise ValueError(f"mode must be 'enforce' or 'shadow', not {spec.mode!r}")
    fallback = compile_fallback(spec)
    if not 400 <= spec.status_code <= 599:
        raise ValueError(f"status_code must be 400-599, not {spec.status_code}")
    try:
        path_regex = re.compile(spec.path_regex) if spec.path_regex else None
    except re.error as exc:
        raise ValueError(f"path_regex does not compile: {exc}") from exc
    tiers = tuple(
        Tier(group, to_rate(rate), burst) for group, rate, burst in spec.tiers
    )
    for tier in tiers:
        Rule(spec.name, "x", tier.rate, spec.algorithm, spec.cost, tier.burst)
    return CompiledPolicy(
        spec=spec,
        rate=rule.parsed_rate,
        methods=frozenset(methods),
        path_re=glob_to_regex(spec.path) if spec.path else None,
        path_regex=path_regex,
        networks=tuple(
            ipaddress.ip_network(n, strict=False) for n in spec.exempt_networks
        ),
        tiers=tiers,
        identify=identity.key_function(spec.key),
        fallback=fallback,
    )


def compile_fallback(spec: PolicySpec) -> Fallback:
    """The policy's fail mode and fallback rate; ValueError says what is wrong."""
    try:
        rate = to_rate(spec.fallback_rate) if spec.fallback_rate else None
    except ValueError as exc:
        raise ValueError(f"fallback_rate: {exc}") from exc
    if not spec.fail_mode:
        return Fallback("", rate)
    return fallback_of(spec.fail_mode, rate)


def compile_all(layers: dict[str, list[PolicySpec]]) -> tuple[CompiledPolicy, ...]:
    """Merge the sources by name (db over settings over code) and compile.

    A spec that fails validation is skipped with an error log; the one it
    would have overridden stays in force.
    """
    merged: dict[str, CompiledPolicy] = {}
    for source in SOURCES:
        for spec in layers.get(source, ()):
            try:
                merged[spec.name] = compile_spec(spec)
            except (ValueError, TypeError, AttributeError) as exc:
                logger.error(
                    "ratelimit: skipping %s policy %r: %s", source, spec.name, exc
                )
    return tuple(sorted(merged.values(), key=lambda p: (p.spec.priority, p.name)))
