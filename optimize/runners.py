"""One runner per runtime: observations in, (probs, value) out, as numpy float32.

Runners are opened from an artifact's bytes (the very bytes whose sha256 was checked), and
import their runtime only when opened, so a worker serving ONNX never imports torch.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Protocol

import numpy as np

from optimize.manifest import Runtime

OBSERVATION_INPUT = "observation"
OUTPUT_NAMES = ("probs", "value")


class Runner(Protocol):
    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``observations`` float32 C-contiguous (B, rows, features) ->
        (probs float32 (B, agents, 3), value float32 (B, 1))."""
        ...


class OrtRunner:
    """The session's run with output names and run options prepared once.

    ``InferenceSession.run`` re-validates the feed on every call (graph-capture mode, input
    names, OrtValue ownership); the names are checked once here instead and the binding's
    ``run`` is called directly: ~0.9 us of ~8.4 us at batch 1 on this host. IOBinding with
    preallocated outputs and ``run_with_ort_values`` were measured too and were not faster.
    If a future onnxruntime drops the private ``_sess`` attribute the public ``run`` is used.
    """

    __slots__ = ("_feed_name", "_options", "_outputs", "_run", "session")

    def __init__(self, session: Any) -> None:
        import onnxruntime as ort

        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [OBSERVATION_INPUT] or outputs != list(OUTPUT_NAMES):
            raise ValueError(
                f"ONNX graph has inputs {inputs} and outputs {outputs}; expected "
                f"[{OBSERVATION_INPUT!r}] and {list(OUTPUT_NAMES)}"
            )
        self.session = session
        self._feed_name = OBSERVATION_INPUT
        self._outputs = list(OUTPUT_NAMES)
        self._options = ort.RunOptions()
        self._run = direct_run(session)

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, value = self._run(self._outputs, {self._feed_name: observations}, self._options)
        return probs, value


class TorchRunner:
    """Eager or TorchScript module under ``inference_mode`` (cheaper than ``no_grad`` here)."""

    __slots__ = ("_from_numpy", "_inference_mode", "module")

    def __init__(self, module: Any) -> None:
        import torch

        self.module = module
        self._from_numpy = torch.from_numpy
        self._inference_mode = torch.inference_mode

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._inference_mode():
            probs, value = self.module(self._from_numpy(observations))
        return probs.numpy(), value.numpy()


def direct_run(session: Any) -> Any:
    """The binding's ``run`` (names checked once by the caller), or the public one when a
    future onnxruntime drops the private ``_sess`` attribute."""
    binding = getattr(session, "_sess", None)
    return binding.run if binding is not None and hasattr(binding, "run") else session.run


def open_session(data: bytes, *, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(
        data, ort_session_options(threads), providers=["CPUExecutionProvider"]
    )


def ort_session_options(threads: int) -> Any:
    """How every worker runs ONNX: ``threads`` intra-op threads, one inter-op, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT's warnings are not the server's to print
    return options


def open_onnx(data: bytes, *, threads: int) -> OrtRunner:
    return OrtRunner(open_session(data, threads=threads))


def _pin_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def open_torchscript(data: bytes, *, threads: int) -> TorchRunner:
    import torch

    _pin_torch_threads(threads)
    # jit.load warns that TorchScript is deprecated; the optimizer recorded that already.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return TorchRunner(module.eval())


def open_eager(data: bytes, *, model: str, threads: int) -> TorchRunner:
    from safetensors.torch import load as load_tensors

    from models import PolicySystem, get_spec

    _pin_torch_threads(threads)
    reference = PolicySystem(get_spec(model))
    # strict: a tensor missing, extra or of another shape is refused with its name.
    reference.load_state_dict(load_tensors(data), strict=True)
    return TorchRunner(reference.eval())


def open_runner(runtime: Runtime, data: bytes, *, model: str, threads: int = 1) -> Runner:
    if runtime == Runtime.ONNXRUNTIME:
        return open_onnx(data, threads=threads)
    if runtime == Runtime.TORCHSCRIPT:
        return open_torchscript(data, threads=threads)
    if runtime == Runtime.TORCH:
        return open_eager(data, model=model, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {[r.value for r in Runtime]}")
