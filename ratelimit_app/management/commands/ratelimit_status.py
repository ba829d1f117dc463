"""manage.py ratelimit_status: one client's live state under one policy."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from ratelimit_app.cli import (
    IDENTITY_HELP,
    client_of,
    client_row,
    find_policy,
    status_lines,
)


class Command(BaseCommand):
    help = (
        "The live state of one client under one policy: limit, remaining, reset "
        "and retry-after (read without consuming anything)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("policy", help="The policy's name.")
        parser.add_argument("identity", help=IDENTITY_HELP)
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object instead."
        )

    def handle(self, *args, **options) -> None:
        policy = find_policy(options["policy"])
        row = client_row(policy, client_of(policy, options["identity"]))
        if options["json"]:
            self.stdout.write(json.dumps(as_json(row)))
            return
        lines = status_lines(row)
        width = max(len(label) for label, _ in lines)
        for label, value in lines:
            self.stdout.write(f"{label.ljust(width)}  {value}")


def as_json(row) -> dict:
    usage = row.usage
    data = {"policy": row.policy.name, "client": row.client, "exempt": usage is None}
    if usage is not None:
        data |= {
            "allowed": usage.allowed,
            "limit": usage.limit,
            "remaining": usage.remaining,
            "reset": usage.reset_after,
            "retry_after": usage.retry_after,
        }
    return data
