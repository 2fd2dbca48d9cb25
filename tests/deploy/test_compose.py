"""compose.yaml runs the same stack as ``loraq up``: check what each service runs.

Uses ``docker compose config`` where the compose plugin exists (it parses
without an engine); otherwise parses the YAML and resolves the anchors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {"LORAQ_ADMIN_KEY": "k", "LORAQ_FLOWER_BASIC_AUTH": "ops:secret", "LORAQ_GRAFANA_PASSWORD": "g"}
SERVICES = {"redis", "postgres", "migrate", "gateway", "worker", "flower", "prometheus", "grafana"}


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def load() -> dict[str, Any]:
    if _compose_plugin():
        out = subprocess.run(
            ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, **ENV},
            check=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def command(service: dict[str, Any]) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_every_service_of_the_stack_is_defined_with_image_and_command() -> None:
    services = load()["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        assert svc.get("image"), name
        if name not in ("redis", "postgres", "prometheus", "grafana"):
            assert command(svc), name


def test_loraq_services_share_redis_database_and_admin_key() -> None:
    services = load()["services"]
    for name in ("migrate", "gateway", "worker", "flower"):
        env = services[name]["environment"]
        assert env["LORAQ_REDIS_URL"] == "redis://redis:6379/0"
        assert env["LORAQ_DATABASE_URL"].startswith("postgresql://")
        assert "LORAQ_ADMIN_KEY" in env
        assert services[name]["depends_on"]["migrate" if name != "migrate" else "postgres"]


def test_services_run_the_real_entry_points() -> None:
    services = load()["services"]
    assert command(services["migrate"]) == "loraq db upgrade"
    assert "gateway.app:create_served_app" in command(services["gateway"])
    worker = command(services["worker"])
    assert "-A workers.app worker" in worker and "-P threads" in worker and "-E" in worker.split()
    flower = command(services["flower"])
    assert "-m gateway.flower" in flower and " flower " in flower
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"]  # never open, never on the command line
    assert "--appendonly yes" in command(services["redis"])


def test_entry_points_in_compose_exist_in_the_package() -> None:
    import importlib

    from gateway.app import create_served_app
    from gateway.cli import app as cli

    assert callable(create_served_app)
    assert any(g.name == "db" for g in cli.registered_groups)
    assert importlib.util.find_spec("workers.app") is not None
    assert importlib.util.find_spec("gateway.flower") is not None


def test_prometheus_scrapes_the_gateway_and_every_worker_and_grafana_has_the_dashboard() -> None:
    services = load()["services"]
    worker_env = services["worker"]["environment"]
    assert worker_env["LORAQ_METRICS_PORT"] == "9410" and worker_env["LORAQ_METRICS_HOST"] == "0.0.0.0"
    prometheus = yaml.safe_load((ROOT / "docs" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["loraq-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["loraq-workers"]["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": 9410}
    dashboard = json.loads((ROOT / "docs" / "grafana-loraq.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in ("loraq_queue_oldest_job_age_seconds", "loraq_worker_completion_tokens_total", "loraq_jobs"):
        assert metric in exprs
