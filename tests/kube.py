"""The Kubernetes manifests under deploy/kubernetes, read for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def resources() -> dict[str, dict[str, Any]]:
    """Every resource the base kustomization names, by kind."""
    kustomization = load(BASE / "kustomization.yaml")
    return {doc["kind"]: doc for doc in (load(BASE / f) for f in kustomization["resources"])}


def container() -> dict[str, Any]:
    (server,) = resources()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server


def container_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def adapter_rules() -> list[dict[str, Any]]:
    return load(KUBE / "prometheus-adapter" / "values.yaml")["rules"]["custom"]


def inference_service() -> dict[str, Any]:
    return load(KUBE / "kserve" / "inferenceservice.yaml")
