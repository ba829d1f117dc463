"""Policies edited in the admin (Policy, exemptions, tiers) and usage statistics."""

from __future__ import annotations

import ipaddress
import re

from django.conf import settings
from django.contrib.admin.decorators import display as admin_display
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from . import identity
from .policies import HTTP_METHODS, split_methods
from .rates import parse_rate
from .types import ALGORITHMS, Rule, check_lease


class Mode(models.TextChoices):
    ENFORCE = "enforce", _("Enforce: block over the limit")
    SHADOW = "shadow", _("Shadow: count and report, never block")


class FailMode(models.TextChoices):
    OPEN = "open", _("Open: allow when Redis fails")
    CLOSED = "closed", _("Closed: deny with 503 when Redis fails")
    LOCAL = "local", _("Local: an in-process limiter when Redis fails")


class Algorithm(models.TextChoices):
    FIXED_WINDOW = "fixed_window", _("Fixed window")
    SLIDING_WINDOW_LOG = "sliding_window_log", _("Sliding window log (exact)")
    SLIDING_WINDOW_COUNTER = "sliding_window_counter", _("Sliding window counter")
    TOKEN_BUCKET = "token_bucket", _("Token bucket")
    LEAKY_BUCKET = "leaky_bucket", _("Leaky bucket (meter)")
    GCRA = "gcra", _("GCRA")


assert tuple(Algorithm.values) == ALGORITHMS


def validate_methods(value: str) -> None:
    unknown = [m for m in split_methods(value) if m not in HTTP_METHODS]
    if unknown:
        raise ValidationError(
            _(
                "Unknown HTTP method(s): %(unknown)s. Use a comma-separated list of %(known)s, or leave blank for all."
            ),
            params={"unknown": ", ".join(unknown), "known": ", ".join(HTTP_METHODS)},
        )


def validate_regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(
            _("This regular expression does not compile: %(error)s."),
            params={"error": exc},
        ) from exc


def validate_key(value: str) -> None:
    try:
        identity.check_key(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


def validate_network(value: str) -> None:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValidationError(
            _(
                "%(value)s is not an IP address or CIDR network (e.g. 203.0.113.0/24 or 2001:db8::/32)."
            ),
            params={"value": value},
        ) from exc


class Policy(models.Model):
    name = models.SlugField(
        _("name"),
        max_length=100,
        unique=True,
        help_text=_(
            "Unique; @rate_limit('name') and RATELIMIT['POLICIES'] refer to it. A row here overrides a settings or code policy of the same name."
        ),
    )
    description = models.TextField(_("description"), blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    mode = models.CharField(
        _("mode"), max_length=10, choices=Mode.choices, default=Mode.ENFORCE
    )
    priority = models.IntegerField(
        _("priority"),
        default=100,
        help_text=_("Lower runs first; orders evaluation and display."),
    )
    url_name = models.CharField(
        _("URL name"),
        max_length=200,
        blank=True,
        help_text=_(
            "Matches requests resolved to this URL name, e.g. 'login' or 'admin:index'."
        ),
    )
    view = models.CharField(
        _("view"),
        max_length=300,
        blank=True,
        help_text=_("Dotted path of a view, e.g. 'myapp.views.login'."),
    )
    path = models.CharField(
        _("path glob"),
        max_length=300,
        blank=True,
        help_text=_(
            "A glob on the request path; * matches any characters, / included, e.g. /api/*."
        ),
    )
    path_regex = models.CharField(
        _("path regex"),
        max_length=300,
        blank=True,
        validators=[validate_regex],
        help_text=_(
            "A Python regular expression searched in the request path, e.g. ^/api/v[12]/."
        ),
    )
    methods = models.CharField(
        _("methods"),
        max_length=100,
        blank=True,
        validators=[validate_methods],
        help_text=_("Comma-separated, e.g. GET,POST. Blank: every method."),
    )
    key = models.CharField(
        _("key"),
        max_length=300,
        default="ip",
        validators=[validate_key],
        help_text=_(
            "Whom to count: ip, user, user_or_ip, header:<name>, get:<name>, post:<name>, session, or a dotted path to a callable(request) returning a string."
        ),
    )
    algorithm = models.CharField(
        _("algorithm"), max_length=30, choices=Algorithm.choices, default=Algorithm.GCRA
    )
    rate = models.CharField(
        _("rate"),
        max_length=50,
        help_text=_("e.g. 100/m, 5/s, 1000/h, 100/5m, 10 per minute."),
    )
    burst = models.PositiveIntegerField(
        _("burst"),
        null=True,
        blank=True,
        help_text=_(
            "Bucket capacity for token_bucket, leaky_bucket and gcra; blank: the rate's limit."
        ),
    )
    cost = models.PositiveIntegerField(
        _("cost"), default=1, help_text=_("Units one request consumes.")
    )
    lease = models.BooleanField(
        _("lease units to each process"),
        default=False,
        help_text=_(
            "Fixed window, token bucket and GCRA only: each process takes a small batch of units from Redis in one call and admits from it without Redis until the batch is used or the lease ends (at most RATELIMIT['LEASE_MAX_SECONDS']). The price: a process may be refused units that another process leased and has not used; worth it for a busy shared key (a global or per-route limit), not for per-IP keys with a low rate each."
        ),
    )
    fail_mode = models.CharField(
        _("when Redis fails"),
        max_length=10,
        choices=FailMode.choices,
        blank=True,
        default="",
        help_text=_(
            "Blank: RATELIMIT['FAIL_MODE'] (default open). Closed answers 503 with Retry-After; local limits in each process at the fallback rate."
        ),
    )
    fallback_rate = models.CharField(
        _("fallback rate"),
        max_length=50,
        blank=True,
        help_text=_(
            "The local fail mode's rate per process, e.g. 20/m; blank: the policy's own rate."
        ),
    )
    status_code = models.PositiveSmallIntegerField(
        _("status code"),
        default=429,
        help_text=_("Response status when blocked (usually 429)."),
    )
    message = models.CharField(
        _("message"),
        max_length=500,
        blank=True,
        help_text=_("Shown to blocked clients; blank: 'Rate limit exceeded'."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("priority", "name")
        verbose_name = _("policy")
        verbose_name_plural = _("policies")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.status_code is not None and not 400 <= self.status_code <= 599:
            raise ValidationError(
                {"status_code": _("Use an HTTP error status between 400 and 599.")}
            )
        if self.rate:
            check_rate(
                self.rate, self.algorithm, self.burst, self.cost or 1, field="rate"
            )
        if self.fallback_rate:
            check_fallback_rate(self.fallback_rate)
        if self.lease:
            check_policy_lease(self.algorithm)


def check_rate(
    rate: str, algorithm: str, burst: int | None, cost: int, field: str
) -> None:
    """Run the engine's own checks, so the admin refuses what the engine would."""
    try:
        Rule("check", "check", rate, algorithm, cost, burst)
    except ValueError as exc:
        target = "burst" if "burst" in str(exc) else field
        raise ValidationError({target: str(exc)}) from exc


def check_policy_lease(algorithm: str) -> None:
    """Refuse lease where the engine would; shadow is fine (it never leases)."""
    try:
        check_lease(True, algorithm, False)
    except ValueError as exc:
        raise ValidationError({"lease": str(exc)}) from exc


def check_fallback_rate(rate: str) -> None:
    try:
        parse_rate(rate)
    except ValueError as exc:
        raise ValidationError({"fallback_rate": str(exc)}) from exc


class Exemption(models.Model):
    """Requests matching any exemption are not counted by the policy."""

    policy = models.ForeignKey(
        Policy, on_delete=models.CASCADE, related_name="exemptions"
    )
    network = models.CharField(
        _("IP or CIDR"),
        max_length=64,
        blank=True,
        validators=[validate_network],
        help_text=_("e.g. 203.0.113.7 or 203.0.113.0/24 or 2001:db8::/32."),
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE
    )
    staff = models.BooleanField(_("all staff"), default=False)

    class Meta:
        verbose_name = _("exemption")

    def __str__(self) -> str:
        parts = [
            self.network,
            self.user and str(self.user),
            self.group and str(self.group),
            self.staff and "staff",
        ]
        return ", ".join(str(p) for p in parts if p) or "-"

    def clean(self) -> None:
        chosen = [
            bool(self.network),
            self.user_id is not None,
            self.group_id is not None,
            self.staff,
        ]
        if sum(chosen) != 1:
            raise ValidationError(
                _("Give exactly one of: IP or CIDR, user, group, or all staff.")
            )


class Tier(models.Model):
    """A different rate for members of a group (the most generous tier wins)."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="tiers")
    group = models.ForeignKey("auth.Group", on_delete=models.CASCADE)
    rate = models.CharField(_("rate"), max_length=50, help_text=_("e.g. 1000/m"))
    burst = models.PositiveIntegerField(_("burst"), null=True, blank=True)

    class Meta:
        verbose_name = _("tier override")
        unique_together = (("policy", "group"),)

    def __str__(self) -> str:
        return f"{self.group}: {self.rate}"

    def clean(self) -> None:
        super().clean()
        policy = getattr(self, "policy", None)
        if self.rate and policy is not None:
            check_rate(
                self.rate, policy.algorithm, self.burst, policy.cost or 1, field="rate"
            )


class UsageCounts(models.Model):
    """Decisions of one policy in one period, drained from the Redis counters.

    Keyed by policy name, not a foreign key: settings and code policies have
    no row, and the stats outlive a deleted policy.
    """

    policy = models.CharField(_("policy"), max_length=255)
    allowed = models.BigIntegerField(_("allowed"), default=0)
    blocked = models.BigIntegerField(_("blocked"), default=0)
    shadow_blocked = models.BigIntegerField(
        _("shadow blocked"),
        default=0,
        help_text=_("Allowed, but a shadow-mode limit would have blocked."),
    )
    cost = models.BigIntegerField(
        _("cost"), default=0, help_text=_("Units of cost consumed.")
    )
    distinct_clients = models.BigIntegerField(
        _("distinct clients"),
        default=0,
        help_text=_(
            "Different identities seen in the period (HyperLogLog estimate, "
            "about 0.8% error). Not a sum: periods do not add up."
        ),
    )

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.policy} @ {getattr(self, self.period):%Y-%m-%d %H:%M}"


class UsageMinute(UsageCounts):
    period = "minute"
    minute = models.DateTimeField(_("minute"))
    rolled_up = models.BooleanField(
        _("rolled up"),
        default=False,
        help_text=_("False: changed since its hour row was last computed."),
    )

    class Meta:
        verbose_name = _("usage per minute")
        verbose_name_plural = _("usage per minute")
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "minute"], name="ratelimit_usageminute_unique"
            )
        ]
        indexes = [
            models.Index(fields=["minute"], name="ratelimit_usageminute_time"),
            models.Index(
                fields=["minute"],
                condition=models.Q(rolled_up=False),
                name="ratelimit_usageminute_dirty",
            ),
        ]


class UsageHour(UsageCounts):
    period = "hour"
    hour = models.DateTimeField(_("hour"))
    rolled_up = models.BooleanField(
        _("rolled up"),
        default=False,
        help_text=_("False: changed since its day row was last computed."),
    )

    class Meta:
        verbose_name = _("usage per hour")
        verbose_name_plural = _("usage per hour")
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "hour"], name="ratelimit_usagehour_unique"
            )
        ]
        indexes = [
            models.Index(fields=["hour"], name="ratelimit_usagehour_time"),
            models.Index(
                fields=["hour"],
                condition=models.Q(rolled_up=False),
                name="ratelimit_usagehour_dirty",
            ),
        ]


class UsageDay(UsageCounts):
    period = "day"
    day = models.DateTimeField(_("day"), help_text=_("Midnight UTC."))

    class Meta:
        verbose_name = _("usage per day")
        verbose_name_plural = _("usage per day")
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "day"], name="ratelimit_usageday_unique"
            )
        ]
        indexes = [models.Index(fields=["day"], name="ratelimit_usageday_time")]


class UsageOffender(models.Model):
    """Denials of one identity under one policy in one hour (top offenders).

    Only the most denied identities are kept per policy and hour
    (``USAGE_OFFENDERS_KEPT``), so this is a top list, not a full count.
    """

    period = "hour"
    policy = models.CharField(_("policy"), max_length=255)
    hour = models.DateTimeField(_("hour"))
    identity = models.CharField(
        _("identity hash"),
        max_length=32,
        help_text=_("The keyed hash of the client's identity, as in Redis keys."),
    )
    label = models.CharField(
        _("client"),
        max_length=64,
        blank=True,
        help_text=_("Safe to show: a masked IP or a user id; blank otherwise."),
    )
    blocked = models.BigIntegerField(_("denials"), default=0)

    class Meta:
        verbose_name = _("top offender")
        verbose_name_plural = _("top offenders")
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "hour", "identity"],
                name="ratelimit_usageoffender_unique",
            )
        ]
        indexes = [models.Index(fields=["hour"], name="ratelimit_offender_time")]

    def __str__(self) -> str:
        return f"{self.display_name} @ {self.policy} {self.hour:%Y-%m-%d %H:00}"

    @property
    @admin_display(description=_("client"))
    def display_name(self) -> str:
        """The label, or the start of the hash when nothing is safe to show."""
        return self.label or f"#{self.identity[:8]}"


class DrainBatch(models.Model):
    """A Redis counter batch already added to the usage rows.

    The unique id makes a repeated or concurrent drain of one batch fail its
    transaction instead of counting the batch twice.
    """

    batch_id = models.CharField(_("batch id"), max_length=64, unique=True)
    drained_at = models.DateTimeField(_("drained at"), auto_now_add=True)
    key_deleted = models.BooleanField(
        _("key deleted"),
        default=False,
        help_text=_("The batch key is gone from Redis, so the row may go soon."),
    )

    class Meta:
        verbose_name = _("drained usage batch")
        indexes = [models.Index(fields=["drained_at"], name="ratelimit_drain_time")]

    def __str__(self) -> str:
        return self.batch_id
