"""The manifests against the real server: started with the Deployment's environment, it
answers the probe paths, serves /metrics where the annotations and the ServiceMonitor
say, and exposes every series the prometheus-adapter rules query."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.kube import adapter_rules, container, container_env, inference_service, resources
from tests.support import start_server

pytestmark = pytest.mark.slow


def test_probes_and_metric_names_are_what_the_server_serves(artifacts_dir: Path) -> None:
    env = {**container_env(), "PIS_ARTIFACTS": str(artifacts_dir)}
    with start_server(artifacts_dir, workers=1, env=env) as server:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = container()[probe]["httpGet"]["path"]
            assert httpx.get(server.url + path, timeout=5).status_code == 200, path
        (kserve,) = inference_service()["spec"]["predictor"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            path = kserve[probe]["httpGet"]["path"]
            assert httpx.get(server.url + path, timeout=5).status_code == 200, path
        body = {"model": "tactical", "observation": [[0.1] * 7] * 60}
        assert httpx.post(server.url + "/infer", json=body, timeout=5).status_code == 200
        (endpoint,) = resources()["ServiceMonitor"]["spec"]["endpoints"]
        annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        assert endpoint["path"] == annotations["prometheus.io/path"]
        text = httpx.get(server.url + endpoint["path"], timeout=5).text
    served = set(re.findall(r"^(pis_\w+?)(?:\{| )", text, flags=re.MULTILINE))
    for rule in adapter_rules():
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert series in served, f"{series} is not in /metrics: {sorted(served)}"
