"""Worker settings that also load the rate-limited test tasks."""

from tests.worker_settings import *  # noqa: F403

CELERY_IMPORTS = ["tests.celery_limited_tasks"]
