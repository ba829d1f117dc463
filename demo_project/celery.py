"""The demo's Celery app: broker on the demo's Redis, tasks found in the apps."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

app = Celery("demo_project")
# Every CELERY_* Django setting configures Celery (CELERY_BROKER_URL, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
