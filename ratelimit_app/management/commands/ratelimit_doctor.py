"""manage.py ratelimit_doctor: check Redis and Celery beat for the limiter."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ratelimit_app import doctor


class Command(BaseCommand):
    help = (
        "Check the limiter's Redis (connection, Lua scripts, eviction policy, "
        "cluster slots, clock) and the Celery beat tasks. Exits 1 when a check "
        "warns, 2 when one fails, printing the fix for each."
    )

    def handle(self, *args, **options) -> None:
        findings = doctor.diagnose()
        styles = {doctor.WARN: self.style.WARNING, doctor.FAIL: self.style.ERROR}
        for finding in findings:
            style = styles.get(finding.status, str)
            for line in doctor.render(finding):
                self.stdout.write(style(line))
        code = doctor.exit_code(findings)
        if code:
            problems = sum(f.status in (doctor.WARN, doctor.FAIL) for f in findings)
            raise CommandError(f"{problems} problem(s) found.", returncode=code)
