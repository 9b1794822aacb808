"""A minimal, tuned stack with none of our features: FastAPI + ONNX Runtime (1 intra-op
thread per worker) on uvicorn with 2 workers, uvloop, httptools, orjson, no access log.

It serves the optimizer's ``onnx_fp32`` artifact when the manifest has one, else exports its
own ONNX of the fused float32 model once at start (before the workers fork)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

import models
from benchmarks.baselines._common import (
    HOST,
    MODEL,
    SPEC,
    decision,
    error_body,
    parse_args,
    version_of,
)
from optimize.loader import ManifestError, load_manifest

MODEL_PATH_ENV = "BENCH_TUNED_ORT_MODEL"  # how main() hands the file to spawned workers
WORKERS = 2


def onnx_fp32_path(artifacts: Path) -> Path | None:
    """The ``onnx_fp32`` variant of the tactical model in the optimizer's manifest, if built."""
    try:
        record = load_manifest(artifacts).model(MODEL).variant("onnx_fp32")
    except ManifestError:
        return None
    path = artifacts / record.file if record.file else None
    return path if path is not None and path.is_file() else None


def export_own_onnx(directory: Path) -> Path:
    import torch

    fused = models.build_default(MODEL).fused()
    path = directory / f"{MODEL}_fp32.onnx"
    example = torch.zeros((1, SPEC.rows, SPEC.features), dtype=torch.float32)
    torch.onnx.export(
        fused,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["probs", "value"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    return path


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _json(status: int, payload: dict) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def create_app() -> FastAPI:
    path = Path(os.environ[MODEL_PATH_ENV])
    session = _session(path)
    input_name = session.get_inputs()[0].name
    version = version_of(path.read_bytes())
    rule = models.EnsembleRule(SPEC)
    shape = SPEC.observation_shape
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> Response:
        return _json(200, {"status": "ok"})

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        try:
            payload = orjson.loads(await request.body())
            model, observation = payload["model"], payload["observation"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _json(422, error_body("invalid_request", "send {model, observation}"))
        if model != MODEL:
            return _json(404, error_body("unknown_model", f"only {MODEL!r} is served"))
        try:
            x = np.asarray(observation, dtype=np.float32)
        except (TypeError, ValueError):
            return _json(422, error_body("invalid_observation", "observation must be numbers"))
        if x.shape != shape:
            return _json(422, error_body("invalid_shape", f"observation must be {shape}"))
        probs, value = session.run(None, {input_name: x[None]})
        answer = decision(probs[0], float(value[0, 0]), rule)
        return _json(200, {"model": MODEL, "version": version, **answer})

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m benchmarks.baselines.tuned_ort", argv)
    with tempfile.TemporaryDirectory(prefix="tuned-ort-") as tmp:
        path = onnx_fp32_path(args.artifacts) or export_own_onnx(Path(tmp))
        print(f"tuned_ort serving {path}", flush=True)
        os.environ[MODEL_PATH_ENV] = str(path)
        uvicorn.run(
            "benchmarks.baselines.tuned_ort:create_app",
            factory=True,
            host=HOST,
            port=args.port,
            workers=WORKERS,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )


if __name__ == "__main__":
    main()
