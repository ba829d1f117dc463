"""bench.http serves the view behind every contender and reports each one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.http import LABELS, find_load_tool

ROOT = Path(__file__).resolve().parent.parent


def table_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


# About 25 s alone, with both cores saturated by wrk and 12 gunicorn workers.
@pytest.mark.slow
def test_quick_run_reports_every_contender(redis_url, tmp_path):
    if find_load_tool(install=True) is None:
        pytest.skip("neither wrk nor ab is on PATH, and apt-get cannot install wrk")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["REDIS_URL"] = redis_url
    out = tmp_path / "http.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.http", "--quick", "--markdown-out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    for label in LABELS.values():
        assert any(row.startswith(f"| {label} |") for row in rows), (label, rows)
    assert table_rows(out.read_text(encoding="utf-8")) == rows
