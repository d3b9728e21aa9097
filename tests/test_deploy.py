"""deploy/: checked with what runs here (no Docker engine, no cluster), and against the code it deploys.

The Kubernetes manifests are validated against Kubernetes' own schemas (kubernetes-validate, offline),
the compose file by `docker-compose config` (which needs no engine), the dashboard's queries against
the metrics the code exposes, and every RUNEVENTS_* variable any of them sets against the settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import kubernetes_validate
import yaml
from prometheus_client import REGISTRY

from runevents.metrics import LagCollector
from runevents.settings import DEFAULT_METRICS_PORT, ENV_PREFIX, Settings
from tests.services import missing_tool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
SETTING_VARIABLES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def documents() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s."""
    return [
        document
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]


def test_every_manifest_is_valid_for_kubernetes_strictly() -> None:
    assert {document["kind"] for document in documents()} >= {
        "Deployment",
        "PodDisruptionBudget",
        "Job",
        "ConfigMap",
        "Secret",
        "Service",
    }
    for document in documents():
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_the_projector_probes_its_own_health_endpoints_on_the_metrics_port() -> None:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["project"]
    assert container["ports"] == [{"name": "metrics", "containerPort": DEFAULT_METRICS_PORT}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def environment_names() -> set[str]:
    """Every RUNEVENTS_* variable the manifests and the compose file set."""
    names = set()
    for document in documents():
        if document["kind"] == "ConfigMap":
            names |= set(document["data"])
        for container in _containers(document):
            names |= {variable["name"] for variable in container.get("env", [])}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    for service in compose["services"].values():
        names |= set(service.get("environment", {}))
    return {name for name in names if name.startswith(ENV_PREFIX)}


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return cast(list[dict[str, Any]], spec.get("containers", []))


def test_every_runevents_variable_deploy_sets_is_a_setting() -> None:
    names = environment_names()
    assert {"RUNEVENTS_DATABASE_URL", "RUNEVENTS_DATABASE_PASSWORD", "RUNEVENTS_KAFKA"} <= names
    assert names <= SETTING_VARIABLES, names - SETTING_VARIABLES


def test_secrets_come_from_secrets_never_from_the_config_map() -> None:
    (config,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    assert not any("PASSWORD" in name for name in config["data"])
    for document in documents():
        for container in _containers(document):
            for variable in container.get("env", []):
                if "PASSWORD" in variable["name"] or variable["name"] == "RUNEVENTS_KEK":
                    assert variable["valueFrom"]["secretKeyRef"]["name"] == "runevents-secrets"


def exposed_metric_names() -> set[str]:
    """The sample names the code's metrics produce (counters' _total, histograms' _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    stub = SimpleNamespace(topic="t", projection="p", progress=dict)
    families = [*REGISTRY.collect(), *LagCollector(stub).collect()]
    return {
        family.name + suffix
        for family in families
        if family.name.startswith("runevents_")
        for suffix in suffixes.get(family.type, ())
    }


def test_the_dashboard_queries_only_metrics_the_code_exposes() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "runevents-projection.json").read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"runevents_[a-z_]+", target["expr"])
    }
    exposed = exposed_metric_names()
    assert len(queried) >= 6
    assert queried <= exposed, queried - exposed


def test_the_image_runs_as_a_numeric_non_root_user_without_the_dev_stack() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert f"EXPOSE {DEFAULT_METRICS_PORT}" in dockerfile
    assert 'ENTRYPOINT ["runevents"]' in dockerfile
    assert "devstack" not in dockerfile.split("FROM python:3.11-slim\n")[-1]


def compose_config(compose: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of deploy/compose.yaml in `env` (it resolves and checks; no engine)."""
    return subprocess.run(
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_the_compose_file_is_valid_for_docker_compose() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        missing_tool("docker-compose is not installed (apt-get install docker-compose)")
    env = {**os.environ, "RUNEVENTS_DATABASE_PASSWORD": "checked-not-used"}
    result = compose_config(compose, env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert {"postgres", "kafka", "migrate", "topic", "projector-1", "projector-2"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["projector-1"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["kafka"]["image"].startswith("apache/kafka:")

    env.pop("RUNEVENTS_DATABASE_PASSWORD")
    refused = compose_config(compose, env)
    assert refused.returncode != 0
    assert "set it in deploy/.env" in refused.stderr
