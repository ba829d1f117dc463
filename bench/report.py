"""One benchmark report: ``bench.decisions``, ``bench.http`` and ``bench.leases``.

``python -m bench.report`` (``make bench``) runs the benchmarks one after the
other on the same Redis and writes their markdown, under one heading with the
date and the machine, to ``bench/REPORT.md`` (``--output``). With ``--readme``
it also puts the report into README.md between the ``<!-- bench-report -->``
markers, so the README shows the latest figures. Extra arguments after ``--``
go to every benchmark (e.g. ``-- --quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    ("Decisions per second, one process, one key", "bench.decisions"),
    ("Requests per second through Django", "bench.http"),
    ("Token leasing: bounds, under-admission, Redis calls", "bench.leases"),
)
README_START = "<!-- bench-report -->"
README_END = "<!-- /bench-report -->"


def machine() -> str:
    """CPU model and count, OS and Python: where the figures were measured."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} CPUs; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def run_benchmark(module: str, extra: Sequence[str]) -> str:
    """The benchmark's markdown report; raises when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.md"
        command = [sys.executable, "-m", module, "--markdown-out", str(out), *extra]
        subprocess.run(command, cwd=ROOT, check=True)
        return out.read_text(encoding="utf-8")


def build_report(sections: Sequence[tuple[str, str]], when: datetime) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"{when:%Y-%m-%d %H:%M} UTC on {machine()}.",
        "Ratios are against the floor measured in the same run (one bare "
        "`EVALSHA` of `return 1`); see each section for its method.",
        "",
    ]
    for title, body in sections:
        lines += [f"## {title}", "", demote(body).strip(), ""]
    return "\n".join(lines)


def demote(markdown: str) -> str:
    """Headings one level down, so each report nests under its section."""
    return "\n".join(
        "#" + line if line.startswith("#") else line for line in markdown.splitlines()
    )


def update_readme(readme: Path, report: str) -> None:
    """Replace the text between the markers; the markers must be there."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(
            f"{readme}: add the lines {README_START} and {README_END} where the "
            "report should go, then run again."
        )
    body = demote(demote(report))  # under the README's own section heading
    text = text[: start + len(README_START)] + "\n" + body + "\n" + text[end:]
    readme.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "REPORT.md")
    parser.add_argument("--readme", action="store_true", help="also update README.md")
    parser.add_argument("extra", nargs="*", help="arguments for both benchmarks")
    args = parser.parse_args(argv)
    sections = [(title, run_benchmark(mod, args.extra)) for title, mod in BENCHMARKS]
    report = build_report(sections, datetime.now(UTC))
    args.output.write_text(report, encoding="utf-8")
    print(f"wrote {args.output}")
    if args.readme:
        update_readme(ROOT / "README.md", report)
        print("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
