"""Offline optimization of the policy models: build each variant (eager, TorchScript, int8,
ONNX Runtime), verify it against the float32 reference, time it on this host, select the
fastest within tolerance, and record it all in ``manifest.json``.

The server imports only ``optimize.loader`` (which imports no runtime until it opens one).
"""
