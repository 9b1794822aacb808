"""What every HTTP codec shares: the answer callback and the endpoint interface that the
fast lane and the ASGI route call, whatever the protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from server.errors import ApiError
from server.head import RequestHead

Headers = tuple[tuple[bytes, bytes], ...]
# respond(status, content type, body, extra headers): called exactly once per request
Respond = Callable[[int, bytes, bytes, Headers], None]

JSON = b"application/json"
NO_HEADERS: Headers = ()
_RETRY_AFTER = {n: ((b"retry-after", str(n).encode()),) for n in range(1, 11)}
# RFC 9110: a 401 names the scheme that would be accepted
CHALLENGE: Headers = ((b"www-authenticate", b'Bearer realm="policy-inference"'),)
_ALLOW_POST: Headers = ((b"allow", b"POST"),)


def error_headers(error: ApiError) -> Headers:
    """Retry-After for a refusal worth retrying; the challenge for a 401; Allow for a 405."""
    seconds = error.retry_after_s
    if seconds is None:
        if error.status == 405:  # the inference routes take POST alone
            return _ALLOW_POST
        return CHALLENGE if error.status == 401 else NO_HEADERS
    return _RETRY_AFTER.get(seconds) or ((b"retry-after", str(seconds).encode()),)


class Endpoint(Protocol):
    """A POST route of the inference path, in one protocol's wire format."""

    def check_head(self, head: RequestHead) -> None:
        """Everything decidable before the body arrives (so a 413 needs no body); raises
        ``ApiError``."""

    def handle(self, head: RequestHead, body: bytes, respond: Respond) -> None:
        """Answers through ``respond`` exactly once, now or later."""

    def refuse(self, error: ApiError, respond: Respond) -> None:
        """Answers an error found by the HTTP layer (before ``handle``)."""
