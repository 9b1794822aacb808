"""Frames between the HTTP front and the inference workers.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair per worker: the kernel keeps message
boundaries, so a frame is one ``send`` and one ``recv`` with no length prefix and no
pickling. Observations travel as raw float32 bytes; answers come back as ready-made JSON
fragments (``"action":...,"value":...``) so the front only concatenates bytes.
"""

from __future__ import annotations

import socket
import struct

# request: id, model index, row count; then rows x input_size float32
REQUEST = struct.Struct("<IBxH")
# reply: id, kind, row count, inference nanoseconds; then row count x u16 lengths, fragments
REPLY = struct.Struct("<IBxHI")

CONTROL_MODEL = 255  # a request frame whose payload is JSON (the start-up handshake)

KIND_OK = 0
KIND_ERROR = 1
KIND_READY = 2

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 4 * 1024 * 1024


def socket_pair() -> tuple[socket.socket, socket.socket]:
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (front, worker):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    return front, worker


def pack_fragments(fragments: list[bytes]) -> bytes:
    lengths = struct.pack(f"<{len(fragments)}H", *map(len, fragments))
    return lengths + b"".join(fragments)


def unpack_fragments(frame: bytes, rows: int) -> list[bytes]:
    offset = REPLY.size + 2 * rows
    lengths = struct.unpack_from(f"<{rows}H", frame, REPLY.size)
    out = []
    for length in lengths:
        out.append(frame[offset : offset + length])
        offset += length
    return out
