"""Settings for the Celery workers tests start: tests.settings on the test's database.

``RATELIMIT_TEST_DB`` (JSON) is merged into ``DATABASES["default"]``: the test
passes pytest-django's test database NAME, or an unreachable HOST and PORT.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"].update(json.loads(os.environ.get("RATELIMIT_TEST_DB", "{}")))
# No remote-control mailbox: nothing but the test's own queue on the shared Redis.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
