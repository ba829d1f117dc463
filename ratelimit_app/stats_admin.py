"""Read-only admin pages for the usage tables (the drain is their only writer)."""

from __future__ import annotations

from django.contrib import admin

from .models import UsageDay, UsageHour, UsageMinute, UsageOffender

COUNT_FIELDS = ("allowed", "blocked", "shadow_blocked", "cost")


class UsageAdmin(admin.ModelAdmin):
    """List, filter and search; no add, change or delete."""

    list_filter = ("policy",)
    search_fields = ("policy",)
    list_per_page = 100

    def get_list_display(self, request):
        return ("policy", self.model.period, *COUNT_FIELDS, "distinct_clients")

    def get_ordering(self, request):
        return (f"-{self.model.period}", "policy")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


for usage_model in (UsageMinute, UsageHour, UsageDay):
    admin.site.register(
        usage_model,
        type(
            f"{usage_model.__name__}Admin",
            (UsageAdmin,),
            {"date_hierarchy": usage_model.period},
        ),
    )


@admin.register(UsageOffender)
class UsageOffenderAdmin(UsageAdmin):
    """The most denied identities per policy and hour."""

    date_hierarchy = "hour"
    search_fields = ("policy", "label", "identity")

    def get_list_display(self, request):
        return ("policy", "hour", "display_name", "blocked")

    def get_ordering(self, request):
        return ("-hour", "policy", "-blocked")
