"""manage.py ratelimit_reset: forget one client's counters of one policy."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from ratelimit_app.cli import (
    IDENTITY_HELP,
    client_of,
    client_row,
    find_policy,
    find_user,
    reset_client,
    usage_text,
)


class Command(BaseCommand):
    help = (
        "Reset one client's counters of one policy (every algorithm's state), "
        "after a confirmation unless --yes or --no-input is given."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("policy", help="The policy's name.")
        parser.add_argument("identity", help=IDENTITY_HELP)
        parser.add_argument(
            "--yes",
            "-y",
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="Do not ask for a confirmation.",
        )
        parser.add_argument(
            "--actor",
            help="A username: record the reset in the admin history as theirs.",
        )

    def handle(self, *args, **options) -> None:
        actor = find_user(options["actor"]) if options["actor"] else None
        policy = find_policy(options["policy"])
        client = client_of(policy, options["identity"])
        row = client_row(policy, client)  # also proves Redis answers
        what = f'the counters of {client.label} for policy "{policy.name}"'
        if row.rule is None:
            state = f"{client.label} is exempt from this policy"
        else:
            state = f"{client.label} has {usage_text(row)} left"
        if options["interactive"] and not confirm(f"{state}. Reset {what}? [y/N] "):
            self.stdout.write("Cancelled: nothing was reset.")
            return
        reset_client(policy, client, actor)
        self.stdout.write(self.style.SUCCESS(f"Reset {what}."))


def confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:  # no terminal: never reset by default
        return False
    return answer.strip().lower() in ("y", "yes")
