"""The two keep-alive load generators behind one result type.

``wrk`` (C, one epoll loop per thread, a Lua script for the bodies) is used when it is on
PATH; the Python generator (asyncio streams on uvloop, raw HTTP/1.1 over keep-alive sockets)
is the fallback, and the one that hands back individual latency samples. Measured on the
2-core VM both cost the machine about the same CPU per request (~30 us at 1 client, ~17 us at
16), which each run records as ``cpu.loadgen_s``. wrk's own tail at 1 client is wider (p99.9
near 1 ms even against the raw floor, ~0.16 ms with the Python generator).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import subprocess
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from benchmarks.bodies import SEQUENCE_LIMIT, BodySet
from benchmarks.procs import LOOPBACK
from benchmarks.stats import latency_summary, sample
from benchmarks.wire import StampedRequests

SAMPLES_KEPT = 2000
# A request unanswered this long counts as an error (both generators).
REQUEST_TIMEOUT_S = 5


class Generator(enum.StrEnum):
    WRK = "wrk"
    PYTHON = "python"
    GRPC_AIO = "grpc.aio"  # benchmarks.grpcload: gRPC calls of pre-serialized bytes


class Bodies(Protocol):
    def body(self, i: int) -> bytes: ...


JSON_HEADERS: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def pick_generator(requested: str) -> Generator:
    if requested == "auto":
        return Generator.WRK if wrk_path() else Generator.PYTHON
    generator = Generator(requested)
    if generator is Generator.WRK and not wrk_path():
        raise RuntimeError(
            "--generator wrk: wrk is not on PATH (apt-get install wrk), or pass --generator python"
        )
    return generator


@dataclass(slots=True)
class LoadResult:
    generator: Generator
    requests: int
    elapsed_s: float
    latency_us: dict[str, float]
    errors: dict[str, int]
    loadgen_cpu_s: float
    samples_us: list[float] | None = field(default=None)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --- Python generator ----------------------------------------------------------------------


class Shared:
    """State the connections of one run share (one event loop, so no locks)."""

    def __init__(self, bodies: Bodies, deadline: float, max_requests: int | None) -> None:
        self.bodies, self.deadline, self.max_requests = bodies, deadline, max_requests
        self.next_index = 0
        self.latencies = array("d")
        self.errors: Counter[str] = Counter()

    def take(self) -> int | None:
        if time.perf_counter() >= self.deadline:
            return None
        if self.max_requests is not None and self.next_index >= self.max_requests:
            return None
        i = self.next_index
        self.next_index += 1
        return i


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one response; returns (status, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    close = b"\r\nconnection: close" in lowered
    pos = lowered.find(b"\r\ncontent-length:")
    if pos >= 0:
        end = lowered.index(b"\r\n", pos + 2)
        await reader.readexactly(int(lowered[pos + 17 : end]))
    elif b"chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, close


def request_head(port: int, path: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request up to the Content-Length value, the same for every request of a run."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode()


async def _connection(port: int, head: bytes, shared: Shared) -> None:
    reader = writer = None
    while (i := shared.take()) is not None:
        body = shared.bodies.body(i)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                if writer is None:
                    reader, writer = await asyncio.open_connection(LOOPBACK, port)
                assert reader is not None
                start = time.perf_counter_ns()
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                status, close = await _read_response(reader)
            shared.latencies.append((time.perf_counter_ns() - start) / 1000.0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            # TimeoutError is an OSError: tell the two apart, as wrk does.
            shared.errors["socket_timeout" if isinstance(e, TimeoutError) else "socket_error"] += 1
            writer = await _close(writer)
            await asyncio.sleep(0.01)  # a refused connection must not spin
            continue
        if not 200 <= status < 300:
            shared.errors[str(status)] += 1
        if close:
            writer = await _close(writer)
    await _close(writer)


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _drive(
    port: int,
    head: bytes,
    bodies: Bodies,
    concurrency: int,
    duration_s: float,
    max_requests: int | None,
) -> tuple[Shared, float]:
    start = time.perf_counter()
    shared = Shared(bodies, start + duration_s, max_requests)
    await asyncio.gather(*(_connection(port, head, shared) for _ in range(concurrency)))
    return shared, time.perf_counter() - start


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_python(
    port: int,
    bodies: Bodies,
    concurrency: int,
    duration_s: float,
    path: str = "/infer",
    max_requests: int | None = None,
    headers: Sequence[tuple[str, str]] = JSON_HEADERS,
) -> LoadResult:
    """``concurrency`` keep-alive connections, each sending its next request as soon as the
    previous answer is read, until ``duration_s`` passes or ``max_requests`` are sent."""
    cpu0 = time.process_time()
    head = request_head(port, path, headers)
    with _event_loop_runner() as runner:
        shared, elapsed = runner.run(
            _drive(port, head, bodies, concurrency, duration_s, max_requests)
        )
    return summarize(Generator.PYTHON, shared.latencies, elapsed, shared.errors, cpu0)


def summarize(
    generator: Generator,
    latencies_us: array,
    elapsed_s: float,
    errors: Counter[str],
    cpu0: float,
) -> LoadResult:
    """A run's result from the latency of every answer (an error status is an answer) and
    the error counts (by status, or by socket failure, which has no latency)."""
    values = latencies_us.tolist()
    return LoadResult(
        generator=generator,
        requests=len(values),
        elapsed_s=elapsed_s,
        latency_us=latency_summary(values),
        errors=dict(errors),
        loadgen_cpu_s=time.process_time() - cpu0,
        samples_us=sample(values, SAMPLES_KEPT),
    )


# --- wrk -----------------------------------------------------------------------------------

# Each wrk thread has its own Lua state: ``setup`` numbers the threads, so thread t sends
# sequence numbers t, t + threads, ... and no two threads send the same body.
_WRK_THREADS = r"""
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
"""

# Counts statuses per thread and prints one machine-readable line at the end.
_WRK_REPORT = r"""
function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do
      counts[code] = (counts[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%d":%d', code, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50":%.1f,"p99":%.1f,"p99_9":%.1f,' ..
    '"max":%.1f,"statuses":{%s},"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout))
end
"""

# benchmarks.bodies: prefix .. sequence .. suffix, the suffixes one per line of a file.
WRK_SCRIPT = (
    _WRK_THREADS
    + r"""
function init(args)
  prefix, mode, nthreads, path = args[2], args[3], tonumber(args[4]), args[5]
  seq_limit = tonumber(args[6])
  suffixes = {}
  for line in io.lines(args[1]) do suffixes[#suffixes + 1] = line end
  n = #suffixes
  seq = tid
  statuses = {}
  headers = {["Content-Type"] = "application/json"}
end

function request()
  local i = seq
  seq = seq + nthreads
  local idx = i % n
  local s = i
  if mode == "warm" then s = idx end
  local body = prefix .. string.format("0.%07d", s % seq_limit) .. suffixes[idx + 1]
  return wrk.format("POST", path, headers, body)
end
"""
    + _WRK_REPORT
)

# benchmarks.wire: chunk 0, stamp, chunk 1, ..., stamp, chunk b; the chunks of every template
# back to back in a binary file (read in binary mode, so any byte may be sent), their lengths
# one template per line in another. A float32 stamp is 1 + s * 2^-23, little-endian. The
# bodies are StampedRequests.body(i) byte for byte; wrk calls request() once on thread 0 to
# check the script, so that thread's first request on the wire is number ``threads``.
WRK_STAMPED_SCRIPT = (
    _WRK_THREADS
    + r"""
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local blob = f:read("*a")
  f:close()
  templates = {}
  local pos = 1
  for line in io.lines(args[2]) do
    local chunks = {}
    for len in string.gmatch(line, "%d+") do
      local n = tonumber(len)
      chunks[#chunks + 1] = string.sub(blob, pos, pos + n - 1)
      pos = pos + n
    end
    templates[#templates + 1] = chunks
  end
  nthreads, batch, stamp, path = tonumber(args[3]), tonumber(args[4]), args[5], args[6]
  headers = {}
  for k = 7, #args - 1, 2 do headers[args[k]] = args[k + 1] end
  seq = tid
  statuses = {}
  parts = {}
end

local function stamp_of(s)
  if stamp == "float32" then
    s = s % 8388608
    return string.char(s % 256, math.floor(s / 256) % 256, 128 + math.floor(s / 65536), 63)
  end
  return string.format("0.%07d", s % 10000000)
end

function request()
  local i = seq
  seq = seq + nthreads
  local chunks = templates[(i % #templates) + 1]
  parts[1] = chunks[1]
  for r = 1, batch do
    parts[2 * r] = stamp_of(i * batch + r - 1)
    parts[2 * r + 1] = chunks[r + 1]
  end
  return wrk.format("POST", path, headers, table.concat(parts, "", 1, 2 * batch + 1))
end
"""
    + _WRK_REPORT
)


def _wait_with_rusage(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Waits for ``proc`` and returns the CPU seconds it used (from wait4's rusage)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise TimeoutError(f"wrk did not finish within {timeout_s:.0f} s; killed it")
        time.sleep(0.05)


def parse_wrk_output(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            return orjson.loads(line[len("BENCH_JSON ") :])
    raise ValueError(f"wrk printed no BENCH_JSON line:\n{text[-2000:]}")


def wrk_errors(report: dict) -> dict[str, int]:
    errors = {code: n for code, n in report["statuses"].items() if not 200 <= int(code) < 300}
    for kind in ("connect", "read", "write", "timeout"):
        if report[kind]:
            errors[f"socket_{kind}"] = int(report[kind])
    return errors


def wrk_seconds(duration_s: float) -> int:
    """The whole seconds wrk runs for when asked for ``duration_s`` (it takes no fractions)."""
    return max(1, int(duration_s + 0.999))


def _run_wrk_script(
    script: str,
    write_data: Callable[[Path, int], list[str]],
    port: int,
    path: str,
    concurrency: int,
    duration_s: float,
    threads: int,
) -> LoadResult:
    """wrk with ``script``; ``write_data(tmp, threads)`` writes the script's data files into
    ``tmp`` and returns the script's arguments. wrk takes whole seconds: the duration rounds
    up."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not on PATH")
    threads = max(1, min(threads, concurrency))
    seconds = wrk_seconds(duration_s)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script_path, out = Path(tmp, "bodies.lua"), Path(tmp, "out")
        script_path.write_text(script)
        args = write_data(Path(tmp), threads)
        argv = [
            exe,
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--timeout",
            f"{REQUEST_TIMEOUT_S}s",
            "-s",
            str(script_path),
            f"http://{LOOPBACK}:{port}{path}",
            "--",
            *args,
        ]
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        cpu = _wait_with_rusage(proc, timeout_s=seconds + 60)
        text = out.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    report = parse_wrk_output(text)
    return LoadResult(
        generator=Generator.WRK,
        requests=int(report["requests"]),
        elapsed_s=report["duration_us"] / 1e6,
        latency_us={k: float(report[k]) for k in ("p50", "p99", "p99_9", "max")},
        errors=wrk_errors(report),
        loadgen_cpu_s=cpu,
    )


def run_wrk(
    port: int,
    bodies: BodySet,
    concurrency: int,
    duration_s: float,
    path: str = "/infer",
    threads: int = 1,
) -> LoadResult:
    """wrk sending ``bodies`` (prefix, sequence number, suffix) to ``path``."""

    def write_data(tmp: Path, threads: int) -> list[str]:
        data = tmp / "bodies.txt"
        bodies.write_lua_data(data)
        mode = str(bodies.mode)
        prefix = bodies.prefix.decode()
        return [str(data), prefix, mode, str(threads), path, str(SEQUENCE_LIMIT)]

    return _run_wrk_script(WRK_SCRIPT, write_data, port, path, concurrency, duration_s, threads)


def run_wrk_stamped(
    port: int, requests: StampedRequests, concurrency: int, duration_s: float, threads: int = 1
) -> LoadResult:
    """wrk sending ``requests`` (any protocol over HTTP, binary bodies included)."""

    def write_data(tmp: Path, threads: int) -> list[str]:
        blob, index = tmp / "chunks.bin", tmp / "chunks.idx"
        requests.write_wrk_data(blob, index)
        headers = [item for pair in requests.headers for item in pair]
        batch, stamp = str(requests.batch), str(requests.stamp)
        return [str(blob), str(index), str(threads), batch, stamp, requests.path, *headers]

    return _run_wrk_script(
        WRK_STAMPED_SCRIPT, write_data, port, requests.path, concurrency, duration_s, threads
    )


def run_load(
    generator: Generator,
    port: int,
    bodies: BodySet,
    concurrency: int,
    duration_s: float,
    wrk_threads: int = 1,
) -> LoadResult:
    if generator is Generator.WRK:
        return run_wrk(port, bodies, concurrency, duration_s, threads=wrk_threads)
    return run_python(port, bodies, concurrency, duration_s)
