"""What most teams write first: a FastAPI endpoint with a pydantic request model, the eager
float32 PyTorch reference model, uvicorn with default settings and 1 worker."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import models
from benchmarks.baselines._common import HOST, MODEL, SPEC, decision, parse_args, version_of


class InferRequest(BaseModel):
    model: str
    observation: list[list[float]]


def create_app() -> FastAPI:
    app = FastAPI()
    policy = models.build_default(MODEL)
    rule = models.EnsembleRule(SPEC)
    version = version_of(b"".join(p.detach().numpy().tobytes() for p in policy.parameters()))

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ok"}

    @app.post("/infer")
    def infer(request: InferRequest) -> dict:
        if request.model != MODEL:
            raise HTTPException(status_code=404, detail=f"unknown model {request.model}")
        x = torch.tensor([request.observation], dtype=torch.float32)
        if tuple(x.shape[1:]) != SPEC.observation_shape:
            raise HTTPException(
                status_code=422,
                detail=f"observation must be {SPEC.rows}x{SPEC.features}, got {tuple(x.shape[1:])}",
            )
        with torch.no_grad():
            probs, value = policy(x)
        answer = decision(probs[0].numpy(), float(value[0, 0]), rule)
        return {"model": MODEL, "version": version, **answer}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m benchmarks.baselines.plain_fastapi", argv)
    uvicorn.run(create_app(), host=HOST, port=args.port)


if __name__ == "__main__":
    main()
