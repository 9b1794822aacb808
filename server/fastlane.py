"""The fast lane: uvicorn's httptools protocol, taking the inference routes itself.

uvicorn turns every request into a scope, a task, an event and several ASGI messages;
for a model that answers in 8 us that machinery costs more than the model. This protocol
subclass takes a ``POST`` that the route table (``routes.py``) gives to a codec when the
connection is idle, hands it straight to that codec and writes the response bytes itself.
Every other request, and one pipelined behind another request, goes through uvicorn and
the ASGI app unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.codecs.base import Endpoint, Headers, Respond
from server.errors import ApiError, InternalError, PayloadTooLarge, error_body
from server.head import RequestHead

log = logging.getLogger("server")
# What the fast lane overrides or reads of uvicorn's protocol (uvicorn internals: the
# version range in pyproject.toml is the one tested; start-up checks these are still there)
_METHODS = (
    "connection_made",
    "eof_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "shutdown",
    "send_400_response",
    "timeout_keep_alive_handler",
)
_STATE = ("cycle", "url", "headers", "expect_100_continue", "parser", "transport", "client")
_STATE += ("server_state", "loop", "pipeline", "flow", "timeout_keep_alive_task")

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
# On shutdown an idle keep-alive connection stays open this long, so that a request the
# client already sent is answered (with ``connection: close``) instead of reset.
_DRAIN_GRACE_S = 0.25
# After an early 413, how long the rest of the refused body may take to arrive (read and
# dropped) before the connection is closed.
_LINGER_S = 2.0


class _NoEvent:
    __slots__ = ()

    def set(self) -> None:
        pass


class FastCycle:
    """Stands where uvicorn keeps its current request cycle while a fast-lane answer is
    pending, so that uvicorn queues anything pipelined behind it and graceful shutdown
    waits for it."""

    __slots__ = ("disconnected", "keep_alive", "lingering", "message_event", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.lingering = False  # answered before its body came: close only once it has
        self.message_event = _NoEvent()


class JsonRefusalProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose own refusals answer the contract's JSON, and
    which does not wait for ever on a client: what serves with ``--no-fast-lane``, and the
    fast lane's base.

    uvicorn times out only an idle connection after an answer; a connection that never
    sends a whole request (nothing at all, headers a byte a second, a body shorter than its
    Content-Length) would hold its socket for ever, so a few thousand of them could take
    the server's file descriptors. Here a request must arrive in full within
    ``read_timeout_s`` of its first byte (a new connection's first request, of connecting):
    past that it gets a 408 and the connection is closed (one that sent nothing is closed
    without an answer). One timer per connection, made again only after it has fired, so
    a request costs a clock read and not a timer."""

    read_timeout_s = 10.0  # set by http_protocol() from the configuration
    _date = (None, b"")
    _reading_since = 0.0  # when the request being read began; 0.0 while none is
    _begun = False  # a byte of that request has come
    _begun_cycle: Any = None  # the cycle current when it began (a newer one is its own)
    _watchdog: Any = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()

    def on_message_begin(self) -> None:
        self._await_request()
        self._begun = True
        self._begun_cycle = self.cycle
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._reading_since = 0.0
        self._begun = False
        super().on_message_complete()

    def _await_request(self) -> None:
        self._reading_since = self.loop.time()
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self.read_timeout_s, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        since = self._reading_since
        if not since or self.transport.is_closing():
            return  # no request being read: the keep-alive timer has the connection
        left = since + self.read_timeout_s - self.loop.time()
        if left > 0:
            self._watchdog = self.loop.call_later(left, self._watch)
        elif not self._begun or self._answered():
            self.transport.close()
        else:
            message = (
                f"the request did not arrive in full within {self.read_timeout_s:g} s of its "
                "first byte; send the whole request (headers and Content-Length bytes of body) "
                "at once"
            )
            self._refuse_and_close(408, "request_read_timeout", message)

    def _answered(self) -> bool:
        """The request being read was answered already (an early 413, or an ASGI route that
        answered before reading its body): no second answer on the connection."""
        cycle = self.cycle
        return cycle is not None and cycle is not self._begun_cycle and cycle.response_complete

    def eof_received(self) -> bool:  # type: ignore[override]
        """The client closed its sending side. A request it had only begun can never be
        whole: 400, then close. One it completed is still answered, then the connection
        closes."""
        if self._begun:
            if not self._answered():
                message = (
                    "the connection's sending side was closed before the request was complete "
                    "(its head, or as many body bytes as Content-Length says); send it whole"
                )
                self._refuse_and_close(400, "incomplete_request", message)
            return False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            return True
        return False

    def send_400_response(self, msg: str) -> None:
        """The HTTP layer's own refusal (a garbage request line, a bad chunk size), in the
        contract's JSON error shape instead of uvicorn's plain text."""
        message = f"{msg} Send a well-formed HTTP/1.1 request."
        self._refuse_and_close(400, "bad_http_request", message)

    def _refuse_and_close(self, status: int, code: str, message: str) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # what the request's handler answers goes nowhere
        self._reading_since = 0.0
        body = error_body(code, message)
        parts = [_STATUS[status], self._default_headers()]
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        parts.append(b"connection: close\r\n\r\n")
        parts.append(body)
        self.transport.write(b"".join(parts))
        self.transport.close()

    def _default_headers(self) -> bytes:
        """uvicorn rebuilds its date header once a second; render it once per change."""
        headers = self.server_state.default_headers
        cached_for, rendered = self._date
        if cached_for is not headers:
            rendered = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self._date = (headers, rendered)
        return rendered


class FastLaneProtocol(JsonRefusalProtocol):
    runtime: Any = None  # set by fast_lane_protocol(); its .routes once the server serves
    _fast: FastCycle | None = None
    _endpoint: Endpoint | None = None
    _body: list[bytes] | None = None
    _body_size = 0
    _early_error: ApiError | None = None
    _head: RequestHead | None = None
    _draining = False
    _lingering = False  # an early 413 answered: dropping the rest of its body
    _linger_timer: Any = None
    _idle_since = 0.0
    _idle_timer: Any = None

    def on_message_begin(self) -> None:
        self._body = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        routes = self.runtime.routes
        idle = self.cycle is None or self.cycle.response_complete
        endpoint = None
        if (
            routes is not None
            and idle
            and self.parser.get_method() == b"POST"
            and not self.parser.should_upgrade()
        ):
            endpoint = routes.match(self.url)
        if endpoint is None:
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False
            return
        self._endpoint = endpoint
        self._head = head = RequestHead(self.headers, self.client, self.url)
        self._early_error = None
        try:
            endpoint.check_head(head)
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
                self._refuse_now(endpoint)
        elif type(self._early_error) is PayloadTooLarge:
            # Its declared length is over the limit: answer now instead of after the whole
            # body has come. What the client still sends is read and dropped; when the body
            # ends the connection goes on (keep-alive) or is closed, and if it has not ended
            # within _LINGER_S the connection is closed. Closing at once would reset it with
            # the body unread, and a client still writing might never read the 413.
            self._lingering = self._fast.lingering = True
            self._refuse_now(endpoint, keep_alive=keep_alive)
            if not self.transport.is_closing():
                self._linger_timer = self.loop.call_later(_LINGER_S, self._linger_expired)

    def _refuse_now(self, endpoint: Endpoint, *, keep_alive: bool = False) -> None:
        self._fast.keep_alive = keep_alive
        error, self._early_error = self._early_error, None
        self._body = None
        endpoint.refuse(error, self._responder(self._fast))

    def _linger_expired(self) -> None:
        self._linger_timer = None
        if self._lingering:
            self._lingering = False
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        chunks = self._body
        if chunks is None:
            return super().on_body(body)
        if self._early_error is None:
            self._body_size += len(body)
            core = self.runtime.core
            if self._body_size > core.max_body:
                self._early_error = core.too_large()
                chunks.clear()
            else:
                chunks.append(body)

    def on_message_complete(self) -> None:
        chunks = self._body
        if chunks is None and not self._lingering:
            return super().on_message_complete()
        self._reading_since = 0.0
        self._begun = False
        if self._lingering:  # the early 413's body has all come
            self._lingering = False
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            if not self._fast.keep_alive:
                self.transport.close()
            return
        self._body = None
        endpoint = self._endpoint
        respond = self._responder(self._fast)
        if self._early_error is not None:
            endpoint.refuse(self._early_error, respond)
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            endpoint.handle(self._head, body, respond)
        except Exception:  # a bug, never the client's doing: answer, do not drop it
            log.exception("handling POST %s failed", self.url.decode("latin-1"))
            if not self._fast.response_complete:
                endpoint.refuse(InternalError("the server failed on this request"), respond)

    def _responder(self, cycle: FastCycle) -> Respond:
        return functools.partial(self._write, cycle)

    def _write(
        self, cycle: FastCycle, status: int, content_type: bytes, body: bytes, headers: Headers
    ) -> None:
        if cycle.response_complete:
            return  # answered already: a second answer would corrupt the connection
        cycle.response_complete = True
        transport = self.transport
        if transport.is_closing() or cycle.disconnected:
            return
        parts = [_STATUS[status], b"content-type: ", content_type, b"\r\ncontent-length: "]
        parts.append(str(len(body)).encode())
        parts.append(b"\r\n")
        parts.append(self._default_headers())
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        transport.write(b"".join(parts))
        if not cycle.keep_alive:
            if not cycle.lingering:
                transport.close()
            return
        self._fast_complete()

    def _fast_complete(self) -> None:
        """uvicorn's ``on_response_complete`` without making a keep-alive timer on every
        answer and cancelling it on the next request (~1.5 us a request): one timer per
        connection, which on firing looks at when the connection last answered."""
        if self.pipeline:
            return self.on_response_complete()
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing() or self.timeout_keep_alive_task is not None:
            return  # closed, or idle after an ASGI answer: uvicorn's own timer has it
        if self._begun or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being read (the watchdog has it) or answered (re-arms)
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

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


def missing_hooks(base: type = HttpToolsProtocol) -> list[str]:
    """What the fast lane needs of uvicorn's protocol and ``base`` lacks."""
    missing = [name for name in _METHODS if not callable(getattr(base, name, None))]
    try:
        source = inspect.getsource(base)
    except (OSError, TypeError):
        return [*missing, "source"]
    return missing + [name for name in _STATE if f"self.{name}" not in source]


def http_protocol(
    runtime: Any, *, fast_lane: bool = True, base: type = HttpToolsProtocol
) -> type | str:
    """uvicorn's ``http=``: the fast lane (or, with ``fast_lane`` off, the protocol that only
    answers its refusals in JSON), or plain httptools (every request through ASGI, same
    answers, slower) when this uvicorn lacks what they hook into."""
    missing = missing_hooks(base)
    if missing:
        log.warning(
            "fast lane off: this uvicorn's httptools protocol lacks %s; serving every request "
            "through ASGI (install a uvicorn within the range pyproject.toml names)",
            ", ".join(missing),
        )
        return "httptools"
    if fast_lane:
        return fast_lane_protocol(runtime)
    timeout = runtime.config.client_read_timeout_s
    return type("BoundJsonRefusalProtocol", (JsonRefusalProtocol,), {"read_timeout_s": timeout})


def fast_lane_protocol(runtime: Any) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, bound to ``runtime`` (whose ``.routes``
    and ``.core`` are set once the server has started)."""
    timeout = runtime.config.client_read_timeout_s
    attributes = {"runtime": runtime, "read_timeout_s": timeout}
    return type("BoundFastLaneProtocol", (FastLaneProtocol,), attributes)
