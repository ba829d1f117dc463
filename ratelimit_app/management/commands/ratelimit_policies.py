"""manage.py ratelimit_policies export|import: policies as JSON or YAML files."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ratelimit_app import policy_io
from ratelimit_app.cli import find_user

# A progress line every this many policies, for files at least this long.
PROGRESS_EVERY = 100


class Command(BaseCommand):
    help = (
        "Export the admin's policies (with exemptions and tiers) to JSON or YAML, "
        "or import such a file: policies are matched by name, created or updated "
        "in one transaction, and nothing is written when any entry is invalid. "
        "Importing the same file twice changes nothing."
    )

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        export = actions.add_parser("export", help="Write every policy to a file.")
        export.add_argument("--format", choices=policy_io.FORMATS)
        export.add_argument(
            "--output", "-o", help="The file to write (default: standard output)."
        )
        load = actions.add_parser("import", help="Create or update policies.")
        load.add_argument("file", help="A JSON or YAML file; - reads standard input.")
        load.add_argument(
            "--format",
            choices=policy_io.FORMATS,
            help="Default: from the extension (.yaml, .yml), else json.",
        )
        load.add_argument(
            "--dry-run",
            action="store_true",
            help="Print what would change, field by field, and write nothing.",
        )
        load.add_argument(
            "--actor",
            help="A username: record each change in the admin history as theirs.",
        )

    def handle(self, *args, **options) -> None:
        if options["action"] == "export":
            self.export(options["format"], options["output"])
        else:
            self.load(options)

    def export(self, fmt: str | None, output: str | None) -> None:
        fmt = policy_io.guess_format(output or "", fmt)
        policies = policy_io.export_policies()
        text = policy_io.dump(policies, fmt)
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}") from exc
        exemptions = sum(len(p["exemptions"]) for p in policies)
        tiers = sum(len(p["tiers"]) for p in policies)
        self.stdout.write(
            f"Exported {len(policies)} policies ({exemptions} exemptions, "
            f"{tiers} tiers) to {output} as {fmt}."
        )

    def load(self, options) -> None:
        path, dry_run = options["file"], options["dry_run"]
        actor = find_user(options["actor"]) if options["actor"] else None
        fmt = policy_io.guess_format(path, options["format"])
        try:
            entries = policy_io.load(read(path), fmt)
            changes = policy_io.import_policies(
                entries, dry_run=dry_run, actor=actor, progress=self.progress
            )
        except policy_io.PolicyFileError as exc:
            lines = [f"  {path}: {problem}" for problem in exc.problems]
            raise CommandError(
                f"Nothing was imported: {len(lines)} problem(s):\n" + "\n".join(lines)
            ) from exc
        self.report(changes, dry_run, options["verbosity"])

    def progress(self, stage: str, done: int, total: int) -> None:
        if total >= PROGRESS_EVERY and (done % PROGRESS_EVERY == 0 or done == total):
            self.stderr.write(f"{stage} {done}/{total} policies")

    def report(self, changes, dry_run: bool, verbosity: int) -> None:
        for change in changes:
            if change.action == "unchanged" and not dry_run and verbosity < 2:
                continue
            self.stdout.write(f'policy "{change.name}": {change.action}')
            for name, old, new in change.fields:
                self.stdout.write(
                    f"  {name}: {policy_io.show(old)} → {policy_io.show(new)}"
                )
        counts = {a: 0 for a in ("created", "updated", "unchanged")}
        for change in changes:
            counts[change.action] += 1
        summary = ", ".join(f"{n} {a}" for a, n in counts.items())
        if dry_run:
            self.stdout.write(f"Dry run: {summary}; nothing was written.")
        elif counts["created"] or counts["updated"]:
            self.stdout.write(self.style.SUCCESS(f"Imported: {summary}."))
        else:
            self.stdout.write(f"No changes: {counts['unchanged']} policies unchanged.")


def read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CommandError(f"Cannot read {path}: not UTF-8 text ({exc})") from exc
