"""The fast lane: uvicorn's httptools protocol, taking ``POST /infer`` itself.

uvicorn turns every request into a scope, a task, an event and several ASGI messages;
for a model that answers in 8 us that machinery costs more than the model. This protocol
subclass takes ``POST /infer`` when the connection is idle, hands it straight to the
inference core and writes the response bytes itself. Every other request, and an
``/infer`` pipelined behind another request, goes through uvicorn and FastAPI unchanged.
"""

from __future__ import annotations

import functools
import time
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import ApiError
from server.infer import InferCore, RequestHead, Respond

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_JSON_HEAD = b"content-type: application/json\r\ncontent-length: "
# On shutdown an idle keep-alive connection stays open this long, so that a request the
# client already sent is answered (with ``connection: close``) instead of reset.
_DRAIN_GRACE_S = 0.25


class _NoEvent:
    __slots__ = ()

    def set(self) -> None:
        pass


class FastCycle:
    """Stands where uvicorn keeps its current request cycle while a fast-lane answer is
    pending, so that uvicorn queues anything pipelined behind it and graceful shutdown
    waits for it."""

    __slots__ = ("disconnected", "keep_alive", "message_event", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = _NoEvent()


class FastLaneProtocol(HttpToolsProtocol):
    core_ref: Any = None  # set by fast_lane_protocol(); its .core is the InferCore
    _fast: FastCycle | None = None
    _body: list[bytes] | None = None
    _body_size = 0
    _early_error: ApiError | None = None
    _head: RequestHead | None = None
    _date = (None, b"")
    _draining = False

    def on_message_begin(self) -> None:
        self._body = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        core: InferCore | None = self.core_ref.core
        idle = self.cycle is None or self.cycle.response_complete
        if (
            core is None
            or not idle
            or self.url != b"/infer"
            or self.parser.get_method() != b"POST"
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False
            return
        self._head = head = RequestHead(self.headers, self.client)
        self._early_error = None
        try:
            core.check_head(head)
        except ApiError as error:
            self._early_error = error
        self._body = []
        self._body_size = 0
        keep_alive = (
            self.parser.should_keep_alive()
            and self.parser.get_http_version() == "1.1"
            and not self._draining
        )
        self._fast = self.cycle = FastCycle(keep_alive)  # type: ignore[assignment]
        if self.expect_100_continue:
            if self._early_error is None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                # The client holds the body back: answer now and close, or its next
                # request would be read as this one's body.
                self._fast.keep_alive = False
                error, self._early_error = self._early_error, None
                self._body = None
                core.fail(error, time.perf_counter_ns(), "", self._responder(self._fast))

    def on_body(self, body: bytes) -> None:
        chunks = self._body
        if chunks is None:
            return super().on_body(body)
        if self._early_error is None:
            self._body_size += len(body)
            if self._body_size > self.core_ref.core.max_body:
                self._early_error = self.core_ref.core.too_large()
                chunks.clear()
            else:
                chunks.append(body)

    def on_message_complete(self) -> None:
        chunks = self._body
        if chunks is None:
            return super().on_message_complete()
        self._body = None
        core: InferCore = self.core_ref.core
        cycle = self._fast
        respond = self._responder(cycle)
        if self._early_error is not None:
            core.fail(self._early_error, time.perf_counter_ns(), "", respond)
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        core.handle(self._head, body, respond)

    def _responder(self, cycle: FastCycle) -> Respond:
        return functools.partial(self._write, cycle)

    def _write(self, cycle: FastCycle, status: int, body: bytes, retry_after: int | None) -> None:
        cycle.response_complete = True
        transport = self.transport
        if transport.is_closing() or cycle.disconnected:
            return
        parts = [_STATUS[status], _JSON_HEAD, str(len(body)).encode(), b"\r\n"]
        parts.append(self._default_headers())
        if retry_after is not None:
            parts.append(b"retry-after: %d\r\n" % retry_after)
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        transport.write(b"".join(parts))
        if not cycle.keep_alive:
            transport.close()
            return
        self.on_response_complete()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: finish what is in flight, close after it."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(_DRAIN_GRACE_S, self._close_when_idle)
        else:
            self.cycle.keep_alive = False

    def _close_when_idle(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()

    def _default_headers(self) -> bytes:
        """uvicorn rebuilds its date header once a second; render it once per change."""
        headers = self.server_state.default_headers
        cached_for, rendered = self._date
        if cached_for is not headers:
            rendered = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self._date = (headers, rendered)
        return rendered


def fast_lane_protocol(core_ref: Any) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, bound to ``core_ref`` (an object whose
    ``.core`` is the ``InferCore`` once the server has started)."""
    return type("BoundFastLaneProtocol", (FastLaneProtocol,), {"core_ref": core_ref})
