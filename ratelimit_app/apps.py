"""Django app configuration: connects signals at start-up and does no I/O."""

from __future__ import annotations

from django.apps import AppConfig


class RatelimitConfig(AppConfig):
    name = "ratelimit_app"
    verbose_name = "Rate limiting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import conf, signals

        conf.connect_signals()
        signals.connect()
