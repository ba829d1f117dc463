"""Signals: ``rate_limited`` on every block; policy edits publish a new snapshot."""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import Signal

# Sent with sender=the policy name, request=..., decision=..., shadow=bool
# for every policy that blocks (or, in shadow mode, would block) a request.
rate_limited = Signal()


def publish_on_commit(**kwargs) -> None:
    """Any change to a policy, exemption or tier republishes after commit."""
    from .snapshot import store

    transaction.on_commit(store.publish, robust=True)


def connect() -> None:
    from .enforcement import forget_groups
    from .models import Exemption, Policy, Tier

    # Other processes see group changes after RATELIMIT['GROUPS_CACHE_SECONDS'].
    user_model = get_user_model() if apps.is_installed("django.contrib.auth") else None
    groups = getattr(user_model, "groups", None)
    if groups is not None:
        m2m_changed.connect(
            forget_groups, sender=groups.through, dispatch_uid="ratelimit_app.groups"
        )
    for model in (Policy, Exemption, Tier):
        uid = f"ratelimit_app.publish.{model.__name__}"
        post_save.connect(publish_on_commit, sender=model, dispatch_uid=uid + ".save")
        post_delete.connect(publish_on_commit, sender=model, dispatch_uid=uid + ".del")
