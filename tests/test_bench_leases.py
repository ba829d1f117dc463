"""bench.leases: its interval arithmetic, its verdicts and a real quick run."""

from __future__ import annotations

import pytest

from bench.leases import max_excess, report
from tests.bench_runs import run_bench


def brute_excess(times, capacity, per_second):
    return max(
        (j - i + 1) - (capacity + per_second * (times[j] - times[i]))
        for j in range(len(times))
        for i in range(j + 1)
    )


def test_the_largest_excess_matches_every_interval_checked_one_by_one():
    times = [0.0, 0.001, 0.002, 0.5, 0.5001, 0.5002, 0.5003, 1.2, 1.2001]
    for capacity, rate in ((2, 4.0), (1, 10.0), (3, 1.0)):
        assert max_excess(times, capacity, rate) == pytest.approx(
            brute_excess(times, capacity, rate)
        )


def test_admissions_at_the_rate_never_exceed_the_exact_bound():
    times = [i / 100 for i in range(300)]  # 100/s for 3 s
    assert max_excess(times, 5, 100.0) <= 1 - 5 + 1e-9  # one admission at a time


def test_the_report_marks_a_bound_broken():
    window = {"even": 3000, "worst": 2000, "held": 900, "after": 3000}
    rows = [
        {
            "algorithm": "gcra",
            "lease": True,
            "attempts": 10,
            "admitted": 9,
            "excess": 400.0,
            "allowed_excess": 250.0,
            "calls_per_request": 0.1,
        }
    ]
    text = report(window, rows, 0.05, 0.5)
    assert "| uneven, idle leases held | 2000 | 3000 | 1000 | 1200 | met |" in text
    assert "| gcra | on | 10 | 9 | 400 | 250 | 0.100 | MISSED |" in text


@pytest.mark.slow
@pytest.mark.alone
def test_a_quick_run_meets_every_bound(redis_url, tmp_path):
    out = tmp_path / "leases.md"
    result = run_bench("bench.leases", redis_url, "--markdown-out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text(encoding="utf-8")
    assert "MISSED" not in text, text
    assert text.count("| met |") == 7, text  # 3 window rows, 4 bucket rows
