"""The built wheel carries the Lua files, templates and migrations, and works."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ratelimit_app"


def package_files() -> set[str]:
    """Every file of the package in the source tree, as wheel paths."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("ratelimit_app-*.whl")
    return built


def test_wheel_carries_every_package_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert package_files() <= names
    for required in (
        "ratelimit_app/py.typed",
        "ratelimit_app/algorithms/gcra.lua",
        "ratelimit_app/algorithms/driver.lua",
        "ratelimit_app/migrations/__init__.py",
    ):
        assert required in names


def test_wheel_installs_into_a_clean_venv_and_decides(wheel, tmp_path, redis_url):
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    # Dependencies come from this venv's site-packages, read through a .pth
    # file, which does not run the editable install's import hook.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(
            SECRET_KEY="wheel-test",
            INSTALLED_APPS=["ratelimit_app"],
            RATELIMIT={{"REDIS_URL": {redis_url!r}, "KEY_PREFIX": "rlwheel:"}},
        )
        django.setup()
        import ratelimit_app
        from ratelimit_app import limiter
        assert ratelimit_app.__file__.startswith({str(target)!r})
        limiter.reset("wheel", "client")
        print(limiter.hit("wheel", "client", "2/m", algorithm="sliding_window_log"))
        limiter.reset("wheel", "client")
        """
    )
    result = subprocess.run(
        [python, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "allowed=True, limit=2, remaining=1" in result.stdout
