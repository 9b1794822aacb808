"""What the core and the codecs need from an HTTP request's head, gathered in one pass."""

from __future__ import annotations


class RequestHead:
    __slots__ = (
        "api_key",
        "client",
        "content_encoding",
        "content_length",
        "content_type",
        "header_length",
        "path",
        "peer",
    )

    def __init__(self, headers: list, peer: tuple | None, path: str = "") -> None:
        """``peer``: the connection's (address, port), as the server reports it; ``path``:
        the decoded URL path."""
        self.content_type: bytes | None = None
        self.content_encoding: bytes | None = None  # lower case; None for identity
        self.content_length = -1
        self.header_length = -1  # the Open Inference Protocol's Inference-Header-Content-Length
        self.api_key: bytes | None = None
        self.peer = peer
        self.path = path
        self.client = peer[0] if peer else "?"
        for name, value in headers:
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"x-api-key":
                self.api_key = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                self.api_key = value[7:]
            elif name == b"content-encoding":
                coding = value.strip().lower()
                self.content_encoding = None if coding == b"identity" else coding
            elif name == b"inference-header-content-length":
                self.header_length = int(value) if value.isdigit() else -2

    def media_type(self) -> bytes | None:
        """The content type without parameters, lower case; None when the header is absent."""
        if self.content_type is None:
            return None
        return self.content_type.split(b";", 1)[0].strip().lower()
