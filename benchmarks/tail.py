"""Where a slow request's time goes at 1 client: ``python -m benchmarks.tail``.

Starts our server with probes (``serve``: the real server, its fast lane's first callback of
each request, its answer's write, the garbage collector and the monitor's tick timed on
CLOCK_MONOTONIC, which every process on the host shares), drives it from one keep-alive
connection with distinct 9-decimal observations, and splits each request's time as the
client saw it into:

- ``to_front``: from the client's send to the front's first callback (the kernel, the wake-up
  of the front's event loop, whatever the loop was doing),
- ``in_front``: from that callback to the answer being handed to the transport (HTTP
  parsing, parse, cache, inference, render),
- ``back``: from there to the client having the whole answer (the write, the kernel, the
  client's wake-up),

then prints the percentiles of each part, and for the slowest 1% of requests which part
grew and what was going on: a collection, a tick, the loop not polling when the request came.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from benchmarks.bodies import Mode, make_bodies
from benchmarks.procs import LOOPBACK, REPO_ROOT, free_port

_clock = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes


# ----------------------------------------------------------------------------- server side


def serve(argv: list[str], out: Path) -> int:
    """The real server with probes; writes them to ``out`` at exit."""
    from server import __main__ as entry
    from server import fastlane, runtime

    arrivals, writes, polling = array("q"), array("q"), array("b")
    gcs, ticks = array("q"), array("q")
    state: dict = {"core": None}
    protocol = fastlane.FastLaneProtocol
    original_data, original_write = protocol.data_received, protocol._write

    def data_received(self, data: bytes) -> None:
        if self.__dict__.get("_awaiting", True):  # the first bytes of a request
            self._awaiting = False
            arrivals.append(_clock())
            core = self.runtime.core
            polling.append(1 if core is not None and core.busy_poll.polling else 0)
        original_data(self, data)

    def write(self, cycle, status, content_type, body, headers) -> None:
        writes.append(_clock())  # the answer is ready: what follows is the way back
        self._awaiting = True
        original_write(self, cycle, status, content_type, body, headers)

    protocol.data_received = data_received
    protocol._write = write

    def on_gc(phase: str, info: dict) -> None:
        gcs.append(_clock() * (1 if phase == "start" else -1))

    gc.callbacks.append(on_gc)
    original_tick = runtime.Runtime._tick_forever

    async def tick_forever(self) -> None:
        original = self.monitor.tick

        def timed(*args, **kwargs):
            start = _clock()
            try:
                return original(*args, **kwargs)
            finally:
                ticks.append(start)
                ticks.append(_clock())

        self.monitor.tick = timed
        state["core"] = self.core
        await original_tick(self)

    runtime.Runtime._tick_forever = tick_forever

    def dump() -> None:
        np.savez(
            out,
            arrivals=np.frombuffer(arrivals, dtype=np.int64),
            writes=np.frombuffer(writes, dtype=np.int64),
            polling=np.frombuffer(polling, dtype=np.int8),
            gcs=np.frombuffer(gcs, dtype=np.int64),
            ticks=np.frombuffer(ticks, dtype=np.int64),
        )

    def dump_and_exit(_signum: int, _frame: object) -> None:
        dump()
        os._exit(0)

    # uvicorn raises the signal again once it has shut down, with the handler it found in
    # place: this one
    signal.signal(signal.SIGTERM, dump_and_exit)
    atexit.register(dump)
    return entry.main(argv)


# ----------------------------------------------------------------------------- client side


def drive(port: int, requests: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One keep-alive connection, each request sent when the previous answer is in; the
    send and receive times of each."""
    bodies = make_bodies("tactical", Mode.COLD, seed)
    head = (
        f"POST /infer HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    sent, received = np.zeros(requests, np.int64), np.zeros(requests, np.int64)
    sock = socket.create_connection((LOOPBACK, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray(1 << 16)
    gc.disable()
    try:
        for i in range(requests):
            body = bodies.body(i)
            message = head + str(len(body)).encode() + b"\r\n\r\n" + body
            sent[i] = _clock()
            sock.sendall(message)
            got = 0
            need = -1
            while need < 0 or got < need:
                got += sock.recv_into(memoryview(buffer)[got:])
                if need < 0:
                    end = buffer.find(b"\r\n\r\n", 0, got)
                    if end >= 0:
                        start = buffer.find(b"content-length: ", 0, end) + 16
                        length = int(buffer[start : buffer.find(b"\r\n", start)])
                        need = end + 4 + length
            received[i] = _clock()
    finally:
        gc.enable()
        sock.close()
    return sent, received


def _overlaps(spans: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each [start, end): whether any (begin, finish) span of ``spans`` overlaps it."""
    if not len(spans):
        return np.zeros(len(start), bool)
    begin, finish = spans[:, 0], spans[:, 1]
    return np.array(
        [bool(((begin < e) & (finish > s)).any()) for s, e in zip(start, end, strict=True)]
    )


def _gc_spans(gcs: np.ndarray) -> np.ndarray:
    starts, stops = gcs[gcs > 0], -gcs[gcs < 0]
    n = min(len(starts), len(stops))
    return np.stack([starts[:n], stops[:n]], axis=1) if n else np.zeros((0, 2), np.int64)


def analyse(sent: np.ndarray, received: np.ndarray, trace: dict, warmup: int) -> str:
    arrivals, writes = trace["arrivals"], trace["writes"]
    n = min(len(sent), len(arrivals), len(writes))
    sent, received = sent[warmup:n], received[warmup:n]
    arrivals, writes, polling = arrivals[warmup:n], writes[warmup:n], trace["polling"][warmup:n]
    parts = {
        "client total": (received - sent) / 1000,
        "to_front": (arrivals - sent) / 1000,
        "in_front": (writes - arrivals) / 1000,
        "back": (received - writes) / 1000,
    }
    lines = [f"{len(sent)} requests, 1 connection; microseconds"]
    lines.append(f"{'part':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>10}")
    for name, values in parts.items():
        p = np.percentile(values, [50, 90, 99, 99.9])
        lines.append(f"{name:<14}" + "".join(f"{v:9.1f}" for v in p) + f"{values.max():10.1f}")
    total = parts["client total"]
    slow = total >= np.percentile(total, 99)
    gc_hit = _overlaps(_gc_spans(trace["gcs"]), sent, received)
    ticks = trace["ticks"].reshape(-1, 2) if len(trace["ticks"]) else np.zeros((0, 2), np.int64)
    tick_hit = _overlaps(ticks, sent, received)
    lines.append(f"slowest 1% ({int(slow.sum())} requests, >= {total[slow].min():.0f} us):")
    for name in ("to_front", "in_front", "back"):
        values = parts[name]
        lines.append(
            f"  {name:<10} median {np.median(values[slow]):7.1f} us "
            f"(all requests {np.median(values):6.1f})"
        )
    for label, mask in (
        ("front was not polling at arrival", polling == 0),
        ("a garbage collection ran", gc_hit),
        ("the monitor's tick ran", tick_hit),
    ):
        lines.append(
            f"  {label}: {mask[slow].mean():6.1%} of the slowest, {mask.mean():6.1%} of all"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="tail-")) / "trace.npz"
    command = [sys.executable, "-m", "benchmarks.tail", "serve", "--trace", str(out), "--"]
    command += ["--host", LOOPBACK, "--port", str(port), "--artifacts", str(args.artifacts)]
    command += ["--log-level", "warning", *args.server_args]
    server = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(2.0)  # /readyz-free: give the workers time to warm
        sent, received = drive(port, args.requests, seed=11)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    trace = dict(np.load(out))
    print(analyse(sent, received, trace, warmup=min(2000, args.requests // 10)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        rest = argv[1:]
        split = rest.index("--")
        trace = Path(rest[rest.index("--trace") + 1])
        return serve(rest[split + 1 :], trace)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tail", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument(
        "server_args", nargs="*", help="more server flags, after --, e.g. -- --busy-poll-us 0"
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
