"""docker-compose.yml, checked by Debian's docker-compose without a Docker engine.

``docker-compose config`` validates the file against the Compose schema and
prints it resolved (anchors merged, defaults filled in); the tests read that
output for the default stack and for the ``cluster`` profile. docker-compose
is installed with apt-get when missing (root only, without the recommended
engine); the tests skip only when it cannot be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from ratelimit_app.backends.topology import CLUSTER_SCHEME, parse_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf.template"

DEFAULT = {
    "redis",
    "postgres",
    "migrate",
    "web1",
    "web2",
    "nginx",
    "celery-worker",
    "celery-beat",
}
CLUSTER_NODES = {f"redis-node-{n}" for n in range(1, 7)}
CLUSTER = DEFAULT | CLUSTER_NODES
CLUSTER |= {"redis-cluster-create", "migrate-cluster", "nginx-cluster"}
CLUSTER |= {"web-cluster-1", "web-cluster-2"}
CLUSTER |= {"celery-worker-cluster", "celery-beat-cluster"}
# The web instances, their load balancer and Celery services, per profile.
STACKS = {
    None: (("web1", "web2"), "nginx", ("celery-worker", "celery-beat")),
    "cluster": (
        ("web-cluster-1", "web-cluster-2"),
        "nginx-cluster",
        ("celery-worker-cluster", "celery-beat-cluster"),
    ),
}
ONE_SHOT = {"migrate", "migrate-cluster", "redis-cluster-create"}
APP_IMAGE = "ratelimit-demo:latest"

HEALTHY = {"condition": "service_healthy"}
COMPLETED = {"condition": "service_completed_successfully"}


def apt_install(package: str) -> bool:
    """apt-get install without recommends (docker-compose recommends the engine)."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if subprocess.run(install, **quiet).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-q"], **quiet)  # stale package lists
    return subprocess.run(install, **quiet).returncode == 0


@pytest.fixture(scope="module")
def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None and apt_install("docker-compose"):
        found = shutil.which("docker-compose")
    if found is None:
        pytest.skip(
            "docker-compose is not installed and apt-get could not install it "
            "(needs root and Debian's docker-compose package)"
        )
    return found


def compose(binary: str, *args: str, profile: str | None = None) -> str:
    command = [binary, "-f", str(COMPOSE)]
    command += ["--profile", profile] if profile else []
    run = subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, f"{' '.join(command + list(args))}:\n{run.stderr}"
    return run.stdout


@pytest.fixture(scope="module", params=[None, "cluster"], ids=["default", "cluster"])
def profile(request) -> str | None:
    return request.param


@pytest.fixture(scope="module")
def services(docker_compose, profile) -> dict[str, dict]:
    """The resolved services that ``docker compose [--profile p] up`` starts."""
    resolved = yaml.safe_load(compose(docker_compose, "config", profile=profile))
    # docker-compose 1.29 prints every service; a profile's run only those
    # without profiles or with an active one.
    active = {profile} if profile else set()
    return {
        name: service
        for name, service in resolved["services"].items()
        if not service.get("profiles") or active & set(service["profiles"])
    }


def environment(service: dict) -> dict[str, str]:
    return service.get("environment") or {}


def limiter_url(service: dict) -> str:
    env = environment(service)
    return env.get("RATELIMIT_REDIS_URL") or env["REDIS_URL"]


def test_validates_without_an_engine(docker_compose, profile):
    assert compose(docker_compose, "config", "-q", profile=profile) == ""


def test_declares_the_services_of_each_profile(services, profile):
    assert set(services) == (CLUSTER if profile else DEFAULT)


def test_images(services):
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:")
    for name, service in services.items():
        if name.startswith("nginx"):
            assert service["image"].startswith("nginx:"), name
        elif name.startswith("redis"):
            assert service["image"].startswith("redis:7"), name
        elif name != "postgres":  # the demo's own image, built from the Dockerfile
            assert service["image"] == APP_IMAGE, name
            assert Path(service["build"]["context"]) == ROOT, name


def test_the_app_image_is_python_311_slim_with_the_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install -r requirements.txt" in dockerfile
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


def test_every_long_running_service_has_a_health_check(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", name
        else:
            assert service["healthcheck"]["test"], name


def test_every_published_port_is_bound_to_loopback(services):
    published = {
        name: service["ports"]
        for name, service in services.items()
        if "ports" in service
    }
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "127.0.0.1:9000:9000/tcp" in published["nginx"]
    assert "127.0.0.1:6379:6379/tcp" in published["redis"]


def test_dependencies_wait_for_health_and_migrations(services, profile):
    webs, balancer, celery = STACKS[profile]
    migrate = "migrate-cluster" if profile else "migrate"
    assert services[migrate]["depends_on"]["postgres"] == HEALTHY
    for name in (*webs, *celery):
        depends = services[name]["depends_on"]
        assert depends["redis"] == HEALTHY, name
        assert depends["postgres"] == HEALTHY, name
        assert depends[migrate] == COMPLETED, name
        if profile == "cluster":
            assert depends["redis-cluster-create"] == COMPLETED, name
    assert services[balancer]["depends_on"] == dict.fromkeys(webs, HEALTHY)


def test_the_cluster_is_created_once_its_six_nodes_are_healthy(services, profile):
    if profile != "cluster":
        assert not CLUSTER_NODES & set(services)
        return
    create = services["redis-cluster-create"]
    assert create["depends_on"] == dict.fromkeys(CLUSTER_NODES, HEALTHY)
    script = " ".join(create["entrypoint"] + create["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    for node in CLUSTER_NODES:
        command = services[node]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"


def test_the_web_instances_share_one_redis(services, profile):
    webs, balancer, celery = STACKS[profile]
    first, second = (environment(services[name]) for name in webs)
    assert first["REDIS_URL"] == second["REDIS_URL"]
    assert first.get("RATELIMIT_REDIS_URL") == second.get("RATELIMIT_REDIS_URL")
    assert first["DATABASE_URL"] == second["DATABASE_URL"]
    # Celery drains the counters the web instances write: the same limiter.
    for name in celery:
        assert limiter_url(services[name]) == limiter_url(services[webs[0]]), name
        assert environment(services[name])["REDIS_URL"] == first["REDIS_URL"], name
    # The balancer spreads over exactly these two.
    upstreams = environment(services[balancer])
    assert {upstreams["UPSTREAM_1"], upstreams["UPSTREAM_2"]} == {
        f"{name}:8000" for name in webs
    }


def test_the_limiter_runs_on_the_stack_s_redis(services, profile):
    webs, _, celery = STACKS[profile]
    for name in (*webs, *celery):
        env = environment(services[name])
        # Cache and Celery broker: always the standalone redis.
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", name
        url = limiter_url(services[name])
        if profile == "cluster":
            parsed = parse_url(url, CLUSTER_SCHEME)
            assert url.startswith("redis+cluster://"), name
            assert {host for host, _ in parsed.hosts} <= CLUSTER_NODES, name
        else:
            assert urlsplit(url).hostname == "redis", name


def test_the_cluster_stack_has_its_own_database(services, profile):
    if profile != "cluster":
        return
    default = urlsplit(environment(services["web1"])["DATABASE_URL"]).path
    cluster = urlsplit(environment(services["web-cluster-1"])["DATABASE_URL"]).path
    assert default != cluster
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    assert f"CREATE DATABASE {cluster.lstrip('/')} " in init
    mounted = services["postgres"]["volumes"]
    assert any("/docker-entrypoint-initdb.d/" in volume for volume in mounted)


def test_the_nginx_template_is_a_valid_config(tmp_path):
    """Rendered as the nginx image does (envsubst), checked by ``nginx -t``."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx)")
    server = NGINX_TEMPLATE.read_text()
    values = {"UPSTREAM_1": "127.0.0.1:8001", "UPSTREAM_2": "127.0.0.1:8002"}
    values["LISTEN_PORT"] = "127.0.0.1:9000"
    for name, value in values.items():
        server = server.replace(f"${{{name}}}", value)
    assert "${" not in server
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{\naccess_log off;\n{server}\n}}\n"
    )
    command = [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)]
    run = subprocess.run(
        [*command, "-e", str(tmp_path / "error.log")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
