"""Which endpoint takes a ``POST``: one table for the fast lane and the ASGI route alike."""

from __future__ import annotations

from server.codecs.base import Endpoint

_OIP_MODELS = b"/v2/models/"
_OIP_INFER = b"/infer"


class Routes:
    """``POST /infer`` (native) and ``POST /v2/models/{model}[/versions/{v}]/infer``
    (Open Inference Protocol); every other path belongs to the operations API."""

    __slots__ = ("_exact", "_oip")

    def __init__(self, native: Endpoint, oip: Endpoint | None = None) -> None:
        self._exact: dict[bytes, Endpoint] = {b"/infer": native}
        self._oip = oip

    def match(self, path: bytes) -> Endpoint | None:
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint
        if self._oip is not None and path.startswith(_OIP_MODELS) and path.endswith(_OIP_INFER):
            return self._oip
        return None
