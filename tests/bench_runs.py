"""Running a benchmark module end to end, as `make bench` does, for its tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, redis_url: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> --quick *args`` from the project root; the bench
    configures Django itself, on ``redis_url``."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", module, "--quick", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
