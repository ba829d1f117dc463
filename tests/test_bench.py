"""bench.decisions runs end to end and reports every algorithm beside the floor."""

from __future__ import annotations

from ratelimit_app.types import ALGORITHMS
from tests.bench_runs import run_bench


def table_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


def test_quick_run_reports_the_floor_and_each_algorithm(redis_url, tmp_path):
    out = tmp_path / "bench.md"
    result = run_bench("bench.decisions", redis_url, "--markdown-out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert any(row.startswith("| floor ") for row in rows), result.stdout
    transport = "| ratelimit_app transport EVALSHA `return 1`, kept connection |"
    assert any(row.startswith(transport) for row in rows), result.stdout
    for algorithm in ALGORITHMS:
        for scenario in ("allowed", "exhausted"):
            prefix = f"| ratelimit_app Limiter.hit | {algorithm} | {scenario} |"
            assert any(row.startswith(prefix) for row in rows), (prefix, result.stdout)
    assert table_rows(out.read_text(encoding="utf-8")) == rows
