"""`manage.py demo_setup`: the demo's policies and an admin user, idempotently."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from demo_project.policies import seed_policies


class Command(BaseCommand):
    help = (
        "Create the demo policies that are missing (edited ones are kept) and the "
        "superuser 'admin'; its password is reset on every run and printed "
        "(DEMO_ADMIN_PASSWORD sets it, else a random one)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--no-admin", action="store_true", help="only the policies")

    def handle(self, *args, username: str, no_admin: bool, **options):
        created, kept = seed_policies()
        self.stdout.write(
            f"Demo policies: created {', '.join(created) or 'none'}; "
            f"kept {', '.join(kept) or 'none'}."
        )
        if not no_admin:
            password = reset_admin(username)
            self.stdout.write(f"Admin user: {username}  password: {password}")


def reset_admin(username: str) -> str:
    """Create the superuser, or give it a new password; return the password."""
    password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    user, _ = get_user_model().objects.get_or_create(username=username)
    user.is_staff = user.is_superuser = user.is_active = True
    user.set_password(password)
    user.save()
    return password
