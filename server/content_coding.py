"""Compressed request bodies (``Content-Encoding: gzip`` or ``deflate``), as Triton takes
them: tritonclient's ``request_compression_algorithm`` sends them. Decompressed up to the
body limit and no further, so a small bomb cannot take the front's memory."""

from __future__ import annotations

import zlib

from server.errors import BadContentEncoding, PayloadTooLarge, UnsupportedMediaType

# zlib window bits to try, in order: deflate is zlib-wrapped (RFC 9110), and raw from some
# clients
_WBITS = {b"gzip": (31,), b"x-gzip": (31,), b"deflate": (15, -15)}


def check(coding: bytes | None) -> None:
    """``coding``: the request's Content-Encoding, None for none or identity."""
    if coding is not None and coding not in _WBITS:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding.decode('latin-1')!r} is not supported; send the body "
            "uncompressed, or compressed with gzip or deflate"
        )


def decode(coding: bytes, body: bytes, limit: int) -> bytes:
    """``body`` decompressed (``check`` passed for ``coding``)."""
    for wbits in _WBITS[coding]:
        try:
            return _inflate(body, wbits, limit, coding)
        except zlib.error:
            continue
    raise BadContentEncoding(f"the body is not valid {coding.decode()} data")


def _inflate(body: bytes, wbits: int, limit: int, coding: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise PayloadTooLarge(
            f"the body decompresses to over the {limit}-byte limit; send fewer observations "
            "per request"
        )
    if not inflater.eof or inflater.unused_data:
        raise BadContentEncoding(
            f"the {coding.decode()} body is truncated or has bytes after its end"
        )
    return out
