"""The admin: policies with exemptions and tiers, bulk actions, explain and usage pages."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from redis.exceptions import RedisError

from . import (
    actions,
    charts,
    dashboard,
    explanation,
    stats_admin,  # noqa: F401  (registers the usage tables)
)
from .enforcement import skipped
from .explanation import cannot_identify, describe_identity, explain
from .models import Exemption, Mode, Policy, Tier
from .policies import HTTP_METHODS, CompiledPolicy
from .snapshot import policy_by_name
from .types import LEASE_ALGORITHMS


class ExemptionInline(admin.TabularInline):
    model = Exemption
    extra = 0
    fields = ("network", "user", "group", "staff")
    raw_id_fields = ("user",)


class TierInline(admin.TabularInline):
    model = Tier
    extra = 0
    fields = ("group", "rate", "burst")


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "rate",
        "algorithm",
        "key",
        "mode",
        "enabled",
        "lease",
        "priority",
        "matches",
    )
    list_editable = ("enabled", "mode")
    list_filter = ("enabled", "mode", "algorithm", "lease", "fail_mode")
    search_fields = ("name", "description", "path", "url_name", "view")
    ordering = ("priority", "name")
    readonly_fields = ("created_at", "updated_at")
    save_on_top = True
    inlines = (ExemptionInline, TierInline)
    actions = (
        "enable",
        "disable",
        "switch_to_shadow",
        "switch_to_enforce",
        "reset_counters",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "description",
                    ("enabled", "mode"),
                    "priority",
                    ("created_at", "updated_at"),
                )
            },
        ),
        (
            _("What it matches"),
            {
                "description": _(
                    "The middleware applies the policy to a request when any of "
                    "these matchers matches and the method is listed. Leave them "
                    "all blank for a policy used only by @rate_limit('name')."
                ),
                "fields": ("url_name", "view", "path", "path_regex", "methods"),
            },
        ),
        (_("Whom it counts"), {"fields": ("key",)}),
        (_("The limit"), {"fields": ("rate", "algorithm", "burst", "cost", "lease")}),
        (
            _("When blocked, and when Redis fails"),
            {"fields": ("status_code", "message", "fail_mode", "fallback_rate")},
        ),
    )

    class Media:
        js = ("ratelimit_app/policy_lease.js",)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "lease":  # the algorithms the form's script shows it for
            field.widget.attrs["data-algorithms"] = " ".join(sorted(LEASE_ALGORITHMS))
        return field

    @admin.display(description=_("matches"))
    def matches(self, policy: Policy) -> str:
        parts = [
            policy.url_name and f"url:{policy.url_name}",
            policy.view and f"view:{policy.view}",
            policy.path,
            policy.path_regex and f"re:{policy.path_regex}",
        ]
        route = " | ".join(p for p in parts if p) or "@rate_limit"
        text = f"{route} [{policy.methods or '*'}]"
        return Truncator(text).chars(60)

    # -- actions: thin shells over ratelimit_app.actions -----------------------

    @admin.action(description=_("Enable selected policies"), permissions=["change"])
    def enable(self, request, queryset):
        count = actions.set_enabled(queryset, True, request.user)
        message = ngettext("%d policy enabled.", "%d policies enabled.", count)
        self.message_user(request, message % count)

    @admin.action(description=_("Disable selected policies"), permissions=["change"])
    def disable(self, request, queryset):
        count = actions.set_enabled(queryset, False, request.user)
        message = ngettext("%d policy disabled.", "%d policies disabled.", count)
        self.message_user(request, message % count)

    @admin.action(
        description=_("Switch selected policies to shadow mode"),
        permissions=["change"],
    )
    def switch_to_shadow(self, request, queryset):
        count = actions.set_mode(queryset, Mode.SHADOW, request.user)
        message = ngettext(
            "%d policy switched to shadow mode.",
            "%d policies switched to shadow mode.",
            count,
        )
        self.message_user(request, message % count)

    @admin.action(description=_("Enforce selected policies"), permissions=["change"])
    def switch_to_enforce(self, request, queryset):
        count = actions.set_mode(queryset, Mode.ENFORCE, request.user)
        message = ngettext("%d policy enforced.", "%d policies enforced.", count)
        self.message_user(request, message % count)

    @admin.action(
        description=_("Reset every client's counters of selected policies"),
        permissions=["change"],
    )
    def reset_counters(self, request, queryset):
        try:
            count = actions.reset_policies(queryset, request.user)
        except RedisError as exc:
            self.message_user(request, redis_failed(exc), messages.ERROR)
            return
        message = ngettext("%d counter deleted.", "%d counters deleted.", count)
        self.message_user(request, message % count)

    # -- extra pages: explain a request, the usage dashboard ---------------------

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        explain = self.admin_site.admin_view(self.explain_view)
        usage_view = self.admin_site.admin_view(self.dashboard_view)
        return [
            path("explain/", explain, name=f"{prefix}_explain"),
            path("dashboard/", usage_view, name=f"{prefix}_dashboard"),
            *super().get_urls(),
        ]

    @property
    def explain_url(self) -> str:
        opts = self.opts
        return reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_explain"
        )

    def changelist_view(self, request, extra_context=None):
        extra = {"can_view_usage": can_view_usage(request.user)}
        return super().changelist_view(request, {**extra, **(extra_context or {})})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_view_usage": can_view_usage(request.user)}
        return super().change_view(
            request, object_id, form_url, {**extra, **(extra_context or {})}
        )

    def dashboard_view(self, request):
        """GET: usage charts of one policy (``?policy=name``) or of all."""
        if not can_view_usage(request.user):
            raise PermissionDenied
        now = dashboard.clock()
        names = dashboard.policy_names(now)
        chosen = request.GET.get("policy", "")
        # Only a listed name reaches a query: anything else shows all policies.
        unknown = chosen not in ("", *names)
        policy = chosen if chosen and not unknown else None
        row = Policy.objects.filter(name=policy).first() if policy else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Usage dashboard"),
            "policy_names": names,
            "policy": policy,
            "policy_row": row,
            "unknown_policy": Truncator(chosen).chars(100) if unknown else "",
            "charts": dashboard.build_charts(policy, now),
            "clients_charts": (
                dashboard.build_clients_charts(policy, now) if policy else []
            ),
            "offender_tables": dashboard.build_offender_tables(policy, now),
            "legend": charts.legend(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/ratelimit_app/policy/dashboard.html", context
        )

    def explain_view(self, request):
        """GET: which policies match a request and the client's live usage;
        POST: reset one client's counters of one policy.
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self.reset_client(request)
        form = ExplainForm(request.GET or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Explain a request"),
            "form": form,
            "can_reset": self.has_change_permission(request),
        }
        if form.is_valid():
            context.update(explain_context(form))
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/ratelimit_app/policy/explain.html", context
        )

    def reset_client(self, request) -> HttpResponseRedirect:
        """POST: forget one client's counters of one policy (change permission)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = ExplainForm(request.POST)
        policy = policy_by_name(request.POST.get("policy", ""))
        if not form.is_valid() or policy is None:
            self.message_user(request, _("Nothing was reset."), messages.ERROR)
            return HttpResponseRedirect(self.explain_url)
        try:
            identity, label = client_of(policy, form)
            actions.reset_client(policy.name, identity, label, request.user)
        except RedisError as exc:
            self.message_user(request, redis_failed(exc), messages.ERROR)
        except Exception as exc:  # a callable key failing on the fake request
            self.message_user(request, cannot_identify(exc), messages.ERROR)
        else:
            message = gettext("Reset the counters of %(client)s for policy %(name)s.")
            self.message_user(request, message % {"client": label, "name": policy.name})
        return HttpResponseRedirect(f"{self.explain_url}?{form.query()}")


# The dashboard shows what the usage tables hold: it needs their view permission.
USAGE_PERMISSIONS = tuple(
    f"ratelimit_app.view_{name}" for name in ("usageminute", "usagehour", "usageday")
)


def can_view_usage(user) -> bool:
    return user.has_perms(USAGE_PERMISSIONS)


def redis_failed(exc: Exception) -> str:
    return gettext("Redis error: %(error)s") % {"error": exc}


# -- explaining a request ----------------------------------------------------------


class ExplainForm(forms.Form):
    user = None  # set by clean_username when a username is given

    path = forms.CharField(
        label=_("Path"), initial="/", max_length=2000, help_text=_("e.g. /api/items/")
    )
    method = forms.ChoiceField(
        label=_("Method"), choices=[(m, m) for m in HTTP_METHODS], initial="GET"
    )
    ip = forms.GenericIPAddressField(label=_("Client IP"), initial="127.0.0.1")
    username = forms.CharField(
        label=_("Username"),
        required=False,
        help_text=_("Optional: explain the request as this user."),
    )

    def clean_path(self) -> str:
        value = urlsplit(self.cleaned_data["path"].strip()).path
        if not value.startswith("/"):
            raise forms.ValidationError(_("Give a path starting with /."))
        return value

    def clean_username(self) -> str:
        username = self.cleaned_data["username"].strip()
        if username:
            User = get_user_model()
            try:
                self.user = User._default_manager.get_by_natural_key(username)
            except User.DoesNotExist as exc:
                raise forms.ValidationError(_("There is no such user.")) from exc
        return username

    def fake_request(self) -> HttpRequest:
        """A request as the middleware would see it, from the form's fields."""
        data = self.cleaned_data
        return explanation.fake_request(
            data["path"], data["method"], data["ip"], self.user
        )

    def query(self) -> str:
        """The form's fields as a query string (back to the page after a reset)."""
        return urlencode({name: self.cleaned_data[name] for name in self.fields})


def explain_context(form: ExplainForm) -> dict:
    """The explain page's results for a valid form."""
    request = form.fake_request()
    rows, redis_error = explain(request, form.cleaned_data.get("username", ""))
    names = [row.policy.name for row in rows if row.policy.spec.source == "db"]
    ids = dict(Policy.objects.filter(name__in=names).values_list("name", "pk"))
    for row in rows:
        row.pk = ids.get(row.policy.name)
    return {
        "rows": rows,
        "redis_error": redis_error,
        "skipped": skipped(request),
    }


def client_of(
    policy: CompiledPolicy, form: ExplainForm, request: HttpRequest | None = None
) -> tuple:
    """(identity the policy counts, what may be shown of it) for the form's request."""
    identity = policy.identify(request or form.fake_request())
    username = form.cleaned_data.get("username", "")
    return identity, describe_identity(policy, identity, username)
