"""A Ray cluster of several nodes on this host, all on loopback: for tests, benchmarks and
trying the deployment without a real cluster.

Ray resolves 127.0.0.1 to the host's routable address when a driver connects
(``resolve_ip_for_localhost``), and its GCS then is not there. With
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray's address lookup answers loopback instead: the
variable is given to every Ray process, and the driver's copy of the constant (read when
``ray`` was imported) is set likewise while the cluster runs. Every node is started with
``node_ip_address=127.0.0.1``, so all traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

LOOPBACK = "127.0.0.1"
# The GCS notices a lost node after health_check_failure_threshold missed checks; Ray's
# defaults (3 s, 5 misses) make that 15 s. A local test cluster checks twice a second.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


@dataclass
class LocalCluster:
    cluster: Any
    nodes: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, num_cpus: float = 2) -> Any:
        node = self.cluster.add_node(**_node_args(num_cpus))
        self.nodes.append(node)
        return node

    def kill_node(self, node: Any) -> None:
        """Kills the node's processes (raylet, its workers and their replicas) at once."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)


def _node_args(num_cpus: float) -> dict[str, Any]:
    return {
        "num_cpus": num_cpus,
        "node_ip_address": LOOPBACK,
        "object_store_memory": 100 * 1024 * 1024,
    }


def cluster_env(haproxy: bool, state_dir: Path) -> dict[str, str]:
    """What the Ray processes must inherit: loopback addresses, this checkout importable,
    and (HAProxy mode) HAProxy's files in a directory of our own, not /tmp/haproxy-serve."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "RAY_SERVE_ENABLE_HA_PROXY": "1" if haproxy else "0",
        # HAProxy may send a request again when the replica's connection died before any
        # answer: inference is idempotent, so a lost node costs a retry, not an error.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response response-timeout",
        "RAY_DEDUP_LOGS": "0",
        # Ray starts its workers (replicas, proxy) at nice 15 so its raylet keeps priority;
        # on a host shared with other work that adds whole scheduler slices to a request.
        "RAY_worker_niceness": "0",
    }
    hap = state_dir / "haproxy"
    env.update(
        RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(hap / "haproxy.cfg"),
        RAY_SERVE_HAPROXY_SOCKET_PATH=str(hap / "admin.sock"),
        RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(hap),
        RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(hap / "server-state"),
    )
    return env


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_cluster(
    nodes: int = 2, num_cpus: float = 2, *, haproxy: bool = False
) -> Iterator[LocalCluster]:
    """``nodes`` Ray nodes on loopback, the driver connected; everything is shut down on
    exit (Serve, the driver, every node's processes)."""
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="pis-ray-"))
        stack.enter_context(_environment(cluster_env(haproxy, Path(state))))
        import ray
        from ray import serve
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        stack.enter_context(mock.patch.object(ray_constants, "ENABLE_RAY_CLUSTER", False))

        head_args = {
            **_node_args(num_cpus),
            "include_dashboard": False,
            "_system_config": FAST_FAILURE_DETECTION,
        }
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        local = LocalCluster(cluster)
        try:
            for _ in range(nodes - 1):
                local.add_node(num_cpus)
            ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
            yield local
        finally:
            _delete_applications(serve)
            ray.shutdown()
            cluster.shutdown()


def _delete_applications(serve: Any, wait_s: float = 10.0) -> None:
    """Asks every replica to stop gracefully (our runtime then stops its worker processes)
    and waits a while for it. A blocking ``serve.delete`` or ``serve.shutdown`` took 30 s
    after a node was lost (Ray's own timeout); whatever is left then goes with the
    cluster, and our workers with their replica (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        apps = list(serve.status().applications)
        for app in apps:
            serve.delete(app, _blocking=False)
        deadline = time.monotonic() + wait_s
        while serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.2)
