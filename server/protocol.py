"""Frames between the HTTP front and the inference workers.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair per worker: the kernel keeps message
boundaries, so a frame is one ``send`` and one ``recv`` with no length prefix and no
pickling. Observations travel as raw float32 bytes; answers come back as one status byte
per row (0: finite outputs) followed by each row's outputs (``server.outputs``).
"""

from __future__ import annotations

import socket
import struct

# request: id, model index, row count; then rows x input_size float32
REQUEST = struct.Struct("<IBxH")
# reply: id, kind, row count, inference nanoseconds, rows run on int8, of those the rows the
# range and the margin guards sent back to float32; then row count status bytes and row
# count x outputs.ROW_BYTES
REPLY = struct.Struct("<IBxHIHHH")

CONTROL_MODEL = 255  # a request frame whose payload is JSON (the start-up handshake)

KIND_OK = 0
KIND_ERROR = 1
KIND_READY = 2

ROW_FINITE = 0
ROW_NOT_FINITE = 1

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 4 * 1024 * 1024


def socket_pair() -> tuple[socket.socket, socket.socket]:
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (front, worker):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    return front, worker
