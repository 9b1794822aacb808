"""The inference worker process: ``python -m server.worker --fd N``.

It receives the front's config as its first frame, loads the manifest's selected
artifacts (each checked against its sha256), warms them, says it is ready, then answers
frames until its socket closes. It dies with its parent (PR_SET_PDEATHSIG), so no worker
outlives a killed front.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time

import numpy as np
import orjson

from models.ensemble import EnsembleRule
from models.spec import SPECS
from server import protocol
from server.config import ServerConfig, config_from_json_dict
from server.engine import Engine, NumpyModel, open_fused

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ModelEndpoint:
    """One loaded model: a batch in, every row's outputs (``server.outputs``) and a status
    byte per row out, from one runtime call (``server.engine``). When the optimizer chose an
    int8 variant for batches (``served.batch_min_rows``), batches that large go to it, behind
    its guards, and what they ran on is counted."""

    __slots__ = ("_counted", "engine", "guarded", "infer", "infer_one", "rule", "served")
    __slots__ += ("shape", "spec")

    def __init__(self, served, rule: EnsembleRule, engine: Engine) -> None:
        self.served = served
        self.rule = rule
        self.spec = rule.spec
        self.shape = self.spec.observation_shape
        self.engine = engine
        # infer(payload, rows) -> (status bytes, outputs); infer_one(row) -> (outputs, finite)
        self.infer_one = engine.infer_one
        min_rows = getattr(served.runner, "min_rows", None)
        self.guarded = min_rows is not None
        self._counted = (0, 0, 0)
        if min_rows is None:
            self.infer = engine.infer
            return
        batches, single = NumpyModel(served.runner, rule).infer, engine.infer

        def infer(payload: memoryview | bytes, rows: int) -> tuple[bytes, bytes]:
            return batches(payload, rows) if rows >= min_rows else single(payload, rows)

        self.infer = infer

    def take_counts(self) -> tuple[int, int, int]:
        """Rows run on int8, and rows the range and margin guards sent to float32, since the
        last call."""
        if not self.guarded:
            return 0, 0, 0
        runner = self.served.runner
        fallbacks = runner.fallbacks()
        now = (runner.int8_rows(), fallbacks["range"], fallbacks["margin"])
        delta = tuple(a - b for a, b in zip(now, self._counted, strict=True))
        self._counted = now
        return delta  # type: ignore[return-value]


def load_endpoints(config: ServerConfig) -> list[ModelEndpoint]:
    """The models, loaded and warmed: for a worker and for the front's inline lane alike
    (unwarmed, the first inline request took 0.5 ms instead of 15 us).

    An ONNX selection runs with the decision folded into its graph (``FusedModel``), from
    the bytes the loader verified, and needs no session of the plain graph beside it (~1.9
    MB a model in every process); the loader's runner is opened only for other runtimes
    (with the numpy decision) and for int8 batches behind their guards."""
    from optimize.loader import load_manifest, load_served, read_variant

    manifest = load_manifest(config.artifacts_dir)
    endpoints = []
    for name in sorted(SPECS):
        rule = EnsembleRule(SPECS[name], config.weights_for(name))
        entry = manifest.model(name)
        fused = entry.selected_variant.runtime == "onnxruntime"
        served, data = read_variant(
            config.artifacts_dir, name, entry.selected_variant.name, manifest=manifest
        )
        if not fused or entry.batch_variant is not None:
            # warm_up() below exercises the whole path (runtime, decision, bindings), so the
            # loader's own warm-up calls would only repeat part of it
            served = load_served(
                config.artifacts_dir,
                name,
                threads=config.worker_threads,
                manifest=manifest,
                warmup_calls=0,
                agent_weights=config.weights_for(name),
            )
        engine: Engine = (
            open_fused(data, rule, threads=config.worker_threads)
            if fused
            else NumpyModel(served.runner, rule)
        )
        endpoints.append(ModelEndpoint(served, rule, engine))
    warm_up(endpoints, config.warmup_calls)
    return endpoints


def warm_up(endpoints: list[ModelEndpoint], calls: int) -> None:
    rng = np.random.default_rng(0)
    for ep in endpoints:
        for batch in (1, 8, 32):
            obs = rng.standard_normal((batch, *ep.shape)).astype(np.float32).tobytes()
            for _ in range(max(1, calls // batch)):
                ep.infer(obs, batch)
        ep.take_counts()  # the warm-up's rows are not the server's


def serve(sock: socket.socket, endpoints: list[ModelEndpoint]) -> None:
    header = protocol.REQUEST
    reply = protocol.REPLY
    head = header.size
    clock = time.perf_counter_ns
    # One receive buffer for the worker's life: no allocation per frame, and the arrays
    # viewed on it are writable (torch warns on read-only ones).
    buffer = bytearray(protocol.MAX_FRAME_BYTES)
    view = memoryview(buffer)
    while True:
        size = sock.recv_into(buffer)
        if not size:
            return
        req_id, model_idx, rows = header.unpack_from(buffer)
        start = clock()
        endpoint = endpoints[model_idx]
        try:
            status, out = endpoint.infer(view[head:size], rows)
        except Exception as exc:  # answer, never die: the front turns this into a 500
            message = f"{type(exc).__name__}: {exc}".encode()[:4000]
            sock.send(reply.pack(req_id, protocol.KIND_ERROR, 0, 0, 0, 0, 0) + message)
            continue
        elapsed = min(clock() - start, 0xFFFFFFFF)
        counts = endpoint.take_counts()
        # one message from three buffers: no concatenation
        sock.sendmsg((reply.pack(req_id, protocol.KIND_OK, rows, elapsed, *counts), status, out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    # Ctrl-C and a SIGTERM sent to the process group reach us too; the front decides when
    # we stop (it closes our socket), and we die with it in any case.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    first = sock.recv(protocol.MAX_FRAME_BYTES)
    if not first:
        return 0
    req_id, _model, _rows = protocol.REQUEST.unpack_from(first)
    try:
        config = config_from_json_dict(orjson.loads(first[protocol.REQUEST.size :]))
        endpoints = load_endpoints(config)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".encode()[:4000]
        sock.send(protocol.REPLY.pack(req_id, protocol.KIND_ERROR, 0, 0, 0, 0, 0) + message)
        return 1
    ready = orjson.dumps(
        {"pid": os.getpid(), "versions": {ep.spec.name: ep.served.version for ep in endpoints}}
    )
    sock.send(protocol.REPLY.pack(req_id, protocol.KIND_READY, 0, 0, 0, 0, 0) + ready)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        serve(sock, endpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
