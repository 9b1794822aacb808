"""What the serving processes load, and what the package declares it needs (issue 10: keep
scipy, matplotlib and torch out of the server; declare only what something uses)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import orjson

from tests.support import ROOT

HEAVY = ("scipy", "matplotlib", "torch", "ray")  # ray: only python -m server.ray imports it

# Imports what the front and a worker import, then drives the monitor through everything it
# does while serving (recording, ticks, the regression check, /stats, /metrics), and prints
# the top-level packages loaded.
SERVING = """
import sys
import orjson
import server.__main__, server.app, server.runtime, server.worker, monitoring
from monitoring import Monitor, MonitorConfig, RegressionConfig, WorkerSnapshot
now = [0.0]
monitor = Monitor(
    MonitorConfig(
        models=("tactical",),
        baseline_latency_us={"tactical": {"p50": 50.0, "p99": 90.0}},
        regression=RegressionConfig(warmup_s=1.0, check_interval_s=1.0, min_samples=10),
    ),
    clock=lambda: now[0],
)
workers = [WorkerSnapshot(0, 1, "ready", 0, 0, 0)]
for second in range(5):
    for i in range(300):
        monitor.record_request("tactical", 200, 100.0 + i, 5, 1, 10, 50, False, i % 3)
        monitor.record_batch("tactical", 1, 60.0 + i % 7, 1)
    now[0] += 1.0
    monitor.tick(workers, {})
assert monitor.stats()["regression"], "the regression check ran"
monitor.prometheus_text(workers)
print(orjson.dumps(sorted({name.split(".")[0] for name in sys.modules})).decode())
"""


def _packages_loaded_by(probe: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after ``probe``, which prints
    them (as orjson) last."""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return set(orjson.loads(result.stdout.strip().splitlines()[-1]))


def test_serving_modules_load_no_scipy_matplotlib_or_torch() -> None:
    loaded = _packages_loaded_by(SERVING)
    assert {"server", "monitoring", "numpy"} <= loaded, "the probe imported the server"
    assert loaded.isdisjoint(HEAVY), f"serving loads {sorted(loaded & set(HEAVY))}"


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for stop in "<>=![ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower())
    return names


def test_runtime_dependencies_hold_only_what_serving_or_optimizing_use() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert runtime.isdisjoint({"hdrhistogram", "prometheus-client", "scipy", "matplotlib"})
    assert "matplotlib" in _requirement_names(extras["report"])
    assert {"prometheus-client", "scipy"} <= _requirement_names(extras["dev"])
    assert "ray" in _requirement_names(extras["ray"])
    assert "'.[dev,report,ray]'" in (ROOT / "Makefile").read_text(), "make test installs all"


def test_loading_the_served_models_imports_no_onnx(artifacts_dir: Path) -> None:
    """A worker and the front's inline copy load the selected ONNX artifacts and fold the
    decision in without the onnx package (and the protobuf it brings), ~6 MB a process."""
    probe = (
        "import sys, pathlib, orjson\n"
        "from server.config import ServerConfig\n"
        "from server.worker import load_endpoints\n"
        f"load_endpoints(ServerConfig(artifacts_dir=pathlib.Path({str(artifacts_dir)!r})))\n"
        "print(orjson.dumps(sorted({m.split('.')[0] for m in sys.modules})).decode())\n"
    )
    loaded = _packages_loaded_by(probe)
    assert "onnxruntime" in loaded, "the probe loaded the models"
    assert loaded.isdisjoint({"onnx", "google", *HEAVY}), sorted(loaded & {"onnx", "google"})
