"""manage.py ratelimit_explain: which policies match a request, with live usage."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError

from ratelimit_app.cli import (
    find_user,
    parse_ip,
    seconds,
    table,
    usage_text,
)
from ratelimit_app.enforcement import skipped
from ratelimit_app.explanation import explain, fake_request
from ratelimit_app.policies import HTTP_METHODS


class Command(BaseCommand):
    help = (
        "Which policies a request would meet, in the order they are evaluated "
        "(the middleware's, then the view's @rate_limit policy), whom each counts "
        "and the client's live usage. Nothing is consumed."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="The request path, e.g. /api/items/.")
        parser.add_argument("--method", default="GET", help="Default: GET.")
        parser.add_argument("--ip", default="127.0.0.1", help="Default: 127.0.0.1.")
        parser.add_argument("--user", help="Explain it as this user (username or id).")

    def handle(self, *args, **options) -> None:
        path = urlsplit(options["path"].strip()).path
        if not path.startswith("/"):
            raise CommandError(f'Give a path starting with /, not "{options["path"]}".')
        method = options["method"].upper()
        if method not in HTTP_METHODS:
            raise CommandError(
                f'Unknown method "{options["method"]}": use one of '
                f"{', '.join(HTTP_METHODS)}."
            )
        ip = parse_ip(options["ip"], "--ip")
        user = find_user(options["user"]) if options["user"] else None
        request = fake_request(path, method, ip, user)
        rows, redis_error = explain(request, user.get_username() if user else "")
        self.render(f"{method} {path}", rows, skipped(request))
        if redis_error:
            raise CommandError(f"Live usage is unavailable: Redis error: {redis_error}")

    def render(self, what: str, rows, never_counted: bool) -> None:
        if never_counted:
            self.stdout.write(
                self.style.WARNING(
                    "This request is never counted: rate limiting is off, the method "
                    "is OPTIONS, or the path is in RATELIMIT['EXEMPT_PATHS']."
                )
            )
        if not rows:
            self.stdout.write(f"No policy matches {what}.")
            return
        headers = ["#", "policy", "source", "mode", "rate", "key", "client"]
        headers += ["remaining", "resets in", "retry after"]
        body = []
        for number, row in enumerate(rows, 1):
            spec, usage = row.policy.spec, row.usage
            cells = [str(number), spec.name, spec.source, spec.mode]
            cells += [f"{row.rate} ({spec.algorithm})", spec.key, row.client or "-"]
            cells.append(usage_text(row))
            if usage is not None:
                cells += [seconds(usage.reset_after), seconds(usage.retry_after)]
            body.append(cells)
        self.stdout.write(f"Policies matching {what}, in evaluation order:")
        for line in table(headers, body):
            self.stdout.write(line)
        for number, row in enumerate(rows, 1):
            if row.error:
                self.stdout.write(self.style.ERROR(f"#{number}: {row.error}"))
