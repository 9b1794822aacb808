"""Reference servers the benchmark compares ours against, each serving the tactical model
with the contract's request and response (422 on a wrong shape; nothing else of ours).

- ``plain_fastapi``: what most teams write first (pydantic model, eager PyTorch, defaults).
- ``tuned_ort``: a minimal tuned stack (ONNX Runtime, 2 workers, uvloop, httptools, orjson).
- ``raw_floor``: a raw ASGI app returning a constant; the floor of Python HTTP here.

Each starts with ``python -m benchmarks.baselines.NAME --port P [--artifacts DIR]``.
"""
