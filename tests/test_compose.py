"""docker-compose.yml is written for users; no engine runs here, so parse it."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_declares_redis_postgres_and_the_web_demo():
    assert {"redis", "postgres", "web"} <= set(services())


def test_every_published_port_is_bound_to_loopback():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_web_waits_for_healthy_redis_and_uses_it():
    web = services()["web"]
    assert web["depends_on"]["redis"]["condition"] == "service_healthy"
    assert web["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert "healthcheck" in services()["redis"]
