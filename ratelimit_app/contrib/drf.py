"""PolicyThrottle: a DRF throttle decided by the engine in one atomic call."""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from ..enforcement import check, pending, record
from ..outcome import Outcome
from ..policies import PolicySpec
from ..snapshot import policy_by_name, register_code_policy

# name -> the declaration registered under it, so each is registered once.
_declared: dict[str, tuple] = {}


class PolicyThrottle(BaseThrottle):
    """Throttle by named policies, or by a rate declared on a subclass.

    Which policies: the class's ``policy`` (a name or a sequence of names);
    else a rate declared on the class, ``rate`` or ``scope`` (looked up in
    DRF's ``DEFAULT_THROTTLE_RATES``, like DRF's throttles); else the view's
    ``throttle_policy``. None of these, or a policy that does not exist or is
    disabled: the request is not throttled.

    A declared rate becomes a code default named ``scope`` (default: the
    class's dotted path) with ``key``, ``algorithm`` and ``burst``, so settings
    and the admin can override it by name, as with ``@rate_limit(rate=...)``.

    Several policies are decided in one engine call, all-or-nothing, and
    ``wait()`` reports that same decision: there is no read-then-write race.
    """

    policy: str | Sequence[str] | None = None
    view_attr = "throttle_policy"
    rate: str | None = None
    scope: str | None = None
    key = "user_or_ip"
    algorithm = "gcra"
    burst: int | None = None
    cost: int | None = None  # units per request; None: the policy's cost

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.policy and (cls.rate or cls.scope):
            raise ImproperlyConfigured(
                f"{cls.__qualname__} sets both `policy` and `rate`/`scope`: name "
                "a policy, or declare a rate, not both."
            )
        if cls.rate:  # a bad declaration fails at import, not on a request
            declare(cls.declared_spec(cls.rate))

    def __init__(self) -> None:
        self.outcome: Outcome | None = None

    # -- DRF's API ---------------------------------------------------------------

    def allow_request(self, request, view) -> bool:
        """Decide every applicable policy in one call; False when any blocks."""
        names = self.get_policy_names(request, view)
        if not names:
            return True
        # Key functions and the middleware's record expect Django's request;
        # DRF's authentication has already set the user on it.
        django_request = getattr(request, "_request", request)
        policies = pending(django_request, [policy_by_name(name) for name in names])
        if not policies:
            return True
        self.outcome = check(django_request, policies, self.get_cost(request, view))
        record(django_request, self.outcome)  # wait() reads only this decision
        return not self.outcome.blocked

    def wait(self) -> float | None:
        """Seconds until the blocking policies admit the request; None: never."""
        return None if self.outcome is None else self.outcome.retry_after

    # -- hooks -------------------------------------------------------------------

    def get_policy_names(self, request, view) -> list[str]:
        """The policies to decide; override to choose per request. []: none."""
        if self.policy:
            names = self.policy
        elif self.rate or self.scope:
            rate = self.get_rate()  # None, as in DRF: not throttled
            names = rate and declare(self.declared_spec(rate)).name
        else:
            names = getattr(view, self.view_attr, None)
        if not names:
            return []
        return [names] if isinstance(names, str) else list(dict.fromkeys(names))

    def get_cost(self, request, view) -> int | None:
        """Units this request consumes; None: each policy's own cost."""
        return self.cost

    def get_rate(self) -> str | None:
        """``rate``, else DRF's ``DEFAULT_THROTTLE_RATES[scope]`` (read now)."""
        if self.rate:
            return self.rate
        try:
            return api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        except KeyError:
            raise ImproperlyConfigured(
                f"No default throttle rate set for {self.scope!r} scope: set "
                f"REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'][{self.scope!r}] or a "
                f"`rate` on {type(self).__qualname__}."
            ) from None

    @classmethod
    def declared_spec(cls, rate: str) -> PolicySpec:
        return PolicySpec(
            name=cls.scope or f"{cls.__module__}.{cls.__qualname__}",
            rate=rate,
            key=cls.key,
            algorithm=cls.algorithm,
            burst=cls.burst,
            source="code",
        )


def declare(spec: PolicySpec) -> PolicySpec:
    """Register a declared rate as a code default, once per change; validate it."""
    declaration = (spec.rate, spec.key, spec.algorithm, spec.burst)
    if _declared.get(spec.name) != declaration:
        register_code_policy(spec, f"Throttle policy {spec.name!r} is invalid")
        _declared[spec.name] = declaration
    return spec
