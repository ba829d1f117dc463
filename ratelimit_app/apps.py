"""Django app configuration: connects signals, registers checks; does no I/O."""

from __future__ import annotations

from django.apps import AppConfig


class RatelimitConfig(AppConfig):
    name = "ratelimit_app"
    verbose_name = "Rate limiting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, conf, signals

        conf.connect_signals()
        signals.connect()
        checks.register_checks()
