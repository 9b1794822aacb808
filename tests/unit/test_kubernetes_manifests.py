"""deploy/kubernetes: every manifest validates offline against the Kubernetes schemas
(``kubernetes-validate --strict``) or, for custom resources, against the shipped schema;
the ports, environment and metric names agree with each other and with the server."""

from __future__ import annotations

import json
import re

import pytest

from server.config import load_config
from tests.kube import (
    BASE,
    adapter_rules,
    container,
    container_env,
    inference_service,
    load,
    resources,
)
from tests.support import ROOT
from tests.tools import required_module

jsonschema = required_module("jsonschema", "pip install -c constraints.txt '.[dev]'")
kubernetes_validate = required_module(
    "kubernetes_validate", "pip install -c constraints.txt '.[dev]'"
)

K8S_VERSION = "1.33.0"  # a current release; kubernetes-validate ships its schemas
CUSTOM_SCHEMAS = {"ServiceMonitor": ROOT / "tests" / "schemas" / "servicemonitor-v1.json"}


def test_kustomization_names_only_files_that_exist() -> None:
    kustomization = load(BASE / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    named = kustomization["resources"]
    assert named and all((BASE / f).is_file() for f in named), named
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(named), "a manifest in base/ is not in the kustomization"


@pytest.mark.parametrize("name", sorted(load(BASE / "kustomization.yaml")["resources"]))
def test_manifest_validates(name: str) -> None:
    document = load(BASE / name)
    schema_path = CUSTOM_SCHEMAS.get(document["kind"])
    if schema_path is not None:
        jsonschema.validate(document, json.loads(schema_path.read_text()))
        return
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_custom_schema_refuses_a_typo() -> None:
    """The custom-resource check is not a formality: kubernetes-validate would pass this."""
    monitor = resources()["ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    schema = json.loads(CUSTOM_SCHEMAS["ServiceMonitor"].read_text())
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, schema)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, K8S_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    deployment = resources()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_container_env_is_a_valid_server_config_on_the_declared_port() -> None:
    config = load_config([], environ=container_env())
    (port,) = container()["ports"]
    assert config.port == port["containerPort"]
    assert config.host == "0.0.0.0"
    assert not config.build_artifacts_if_missing, "a pod must serve verified built artifacts"
    # One front core plus the workers: the CPU the pod asks for.
    cpu = float(container()["resources"]["requests"]["cpu"])
    assert config.workers + 1 == cpu
    annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.port


def test_service_monitor_and_probes_name_the_container_port() -> None:
    (port,) = container()["ports"]
    service = resources()["Service"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    (endpoint,) = resources()["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container()[probe]["httpGet"]["port"] == port["name"]
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_pod_runs_non_root_on_a_read_only_filesystem() -> None:
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    # The drain must fit in the grace period: preStop sleep + the server's own grace.
    sleep_s = int(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace_s = float(container_env()["PIS_SHUTDOWN_GRACE_S"])
    assert sleep_s + grace_s < pod["terminationGracePeriodSeconds"]


def test_hpa_reads_the_metrics_the_adapter_exposes() -> None:
    hpa = resources()["HorizontalPodAutoscaler"]
    exposed = {rule["name"]["as"] for rule in adapter_rules()}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted and wanted <= exposed
    assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == resources()["Deployment"]["metadata"]["name"]
    for rule in adapter_rules():
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)


def test_kserve_example_validates_and_its_container_is_a_server_on_its_ports() -> None:
    service = inference_service()
    schema = json.loads((ROOT / "tests" / "schemas" / "inferenceservice-v1beta1.json").read_text())
    jsonschema.validate(service, schema)
    predictor = service["spec"]["predictor"]
    (server,) = predictor["containers"]
    # The container and its volumes are core/v1 objects: check them as a Pod would hold them.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {"containers": [server], "volumes": predictor["volumes"]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    config = load_config([], environ={e["name"]: e["value"] for e in server["env"]})
    assert [p["containerPort"] for p in server["ports"]] == [config.port]
    assert config.grpc_port is not None and config.grpc_port != config.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] == config.port
    assert server["resources"] == container()["resources"], "sized as the base Deployment"
