"""The deploy files hold together without a container engine: the compose file against
the Compose Specification's JSON schema (``compose_spec.json``, as Docker Compose 1.29.2
ships it, Apache-2.0) and its own references, its services and limits, the cluster nginx
config through ``nginx -t``, the alert rules through ``promtool`` (else as YAML), and
every metric they and the dashboard name is one that ``/metrics`` exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from cluster import Instance, cluster_nginx_config
from conftest import running_server
from nginx import nginx_binary

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bbridge_[a-z_]+\b")


def test_compose_runs_three_instances_on_redis_behind_nginx_with_the_production_limits():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "nginx", "bridge1", "bridge2", "bridge3"} <= services.keys()
    for name in ("bridge1", "bridge2", "bridge3"):
        service = services[name]
        env = service["environment"]
        assert env["BRIDGE_INSTANCE_ID"] == name
        assert env["BRIDGE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["MAX_CONNECTIONS_PER_SESSION"] == "15"
        assert env["MAX_CONNECTIONS_PER_MINUTE"] == "50"
        assert env["MAX_MEMORY_MB"] == "4096"
        assert env["SERVICE_IDLE_TIMEOUT"] == "600"
        assert service["mem_limit"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        # Forwarded addresses count only from nginx's own address.
        nginx_address = services["nginx"]["networks"]["bridge-net"]["ipv4_address"]
        assert env["BRIDGE_TRUSTED_PROXIES"] == nginx_address
    assert all(services[name].get("mem_limit") for name in services)


def compose_errors(compose: dict) -> list[str]:
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]


def test_the_compose_file_follows_the_compose_specification():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose_errors(compose) == []
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):  # the short form: started, not healthy
            depends_on = {needed: {} for needed in depends_on}
        for needed, condition in depends_on.items():
            assert needed in services, f"{name} depends on unknown {needed}"
            if condition.get("condition") == "service_healthy":
                healthy = "healthcheck" in services[needed] or "HEALTHCHECK" in (
                    (DEPLOY / "Dockerfile").read_text() if "build" in services[needed] else ""
                )
                assert healthy, f"{name} waits for {needed} to be healthy, which has no check"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):  # a bind mount: the file comes with the deploy files
                assert source.endswith(".rendered.conf") or (DEPLOY / source).exists(), source
            else:
                assert source in compose["volumes"], f"{name} mounts unknown volume {source}"
        for network in service.get("networks", []):
            assert network in compose["networks"], f"{name} joins unknown network {network}"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c["services"]["bridge1"].update(mem_limt="1g"), "mem_limt"),
        (lambda c: c["services"]["redis"].update(ports="6379"), "ports"),
        (lambda c: c["services"]["nginx"].update(restart=["always"]), "restart"),
    ],
)
def test_the_schema_check_names_what_is_wrong(change, named):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    change(compose)
    errors = compose_errors(compose)
    assert errors and any(named in error for error in errors), errors


def test_the_dockerfile_is_slim_runs_unprivileged_and_checks_livez():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/livez", text, re.M)


def test_the_cluster_nginx_config_passes_nginx_t(tmp_path):
    instances = [Instance(f"bridge{n}", 9000 + n, tmp_path / f"bridge{n}", {}) for n in (1, 2, 3)]
    config = tmp_path / "nginx.conf"
    config.write_text(cluster_nginx_config(tmp_path, instances, 8999))
    checked = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    text = "\n".join(line.split("#")[0] for line in config.read_text().splitlines())
    assert "ip_hash" not in text
    assert "proxy_read_timeout 3600s" in text and "proxy_send_timeout 3600s" in text


def test_the_alert_rules_pass_promtool_and_hold_the_production_thresholds():
    path = DEPLOY / "monitoring" / "alerts.yml"
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = {r["alert"]: r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert rules["BridgeMemoryHigh"]["expr"].endswith("> 0.80")
    assert rules["BridgeMemoryCritical"]["expr"].endswith("> 0.95")
    assert rules["BridgeRateLimitViolations"]["expr"].endswith("* 60 > 10")
    assert rules["BridgeServiceStartFailures"]["expr"].endswith("* 60 > 5")


@pytest.fixture
async def exported(tmp_path) -> set[str]:
    async with (
        running_server(tmp_path / "state") as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        await client.get("/api/sessions/")  # a request is timed once it has been answered
        text = (await client.get("/metrics")).text
    return set(METRIC.findall(text))


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(exported):
    rules = yaml.safe_load((DEPLOY / "monitoring" / "alerts.yml").read_text())
    named = {m for g in rules["groups"] for r in g["rules"] for m in METRIC.findall(r["expr"])}
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    named |= {
        m for p in dashboard["panels"] for t in p["targets"] for m in METRIC.findall(t["expr"])
    }
    assert named, "no metric named"
    assert named <= exported, sorted(named - exported)
