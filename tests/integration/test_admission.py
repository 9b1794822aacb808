"""A burst against the admission budget: 160 keep-alive connections (10x the 16 the server
sustains) with distinct observations for a few seconds, with the default budget
(``--latency-budget-ms 5``) and a small one. Nothing may hang; every answer is a 200 or a
503 with Retry-After, in the contract's shape; each request is answered exactly once (no
response missing, none extra on the connection). Admitted and rejected p99 and the 200s'
requests/s are printed (``-s``), not asserted: wall-clock figures on a shared 2-core machine
say how it went, not whether the server is right."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bodies import Mode, make_bodies
from tests.contract import violations
from tests.support import start_server

pytestmark = pytest.mark.slow

CONNECTIONS = 160
BURST_S = 3.0
HANG_S = 15.0  # an answer later than this is a hung request


@dataclass
class Burst:
    sent: int = 0
    hung: int = 0
    dropped: int = 0
    extra: int = 0  # bytes after the last answer on a connection: a second answer
    statuses: Counter = field(default_factory=Counter)
    latency_us: dict[int, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def p99(self, status: int) -> float:
        values = self.latency_us.get(status)
        return float(np.percentile(values, 99)) if values else float("nan")

    def report(self, title: str) -> str:
        ok = self.statuses[200]
        return (
            f"{title}: sent {self.sent}, answers {dict(self.statuses)}, hung {self.hung}, "
            f"dropped {self.dropped}, extra {self.extra}, non-contract {len(self.problems)}; "
            f"admitted p99 {self.p99(200) / 1000:.2f} ms, rejected p99 "
            f"{self.p99(503) / 1000:.2f} ms; 200s {ok / self.elapsed_s:,.0f}/s, "
            f"{ok / max(1, self.sent):.1%} admitted"
        )


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def burst(port: int, seconds: float, seed: int) -> Burst:
    bodies = make_bodies("tactical", Mode.COLD, seed=seed)
    result = Burst()
    counter = iter(range(10**9))
    deadline = time.monotonic() + seconds
    header = b"POST /infer HTTP/1.1\r\nhost: burst\r\ncontent-type: application/json\r\n"

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                body = bodies.body(next(counter))
                start = time.perf_counter()
                writer.write(header + b"content-length: %d\r\n\r\n" % len(body) + body)
                result.sent += 1
                try:
                    status, headers, payload = await asyncio.wait_for(_answer(reader), HANG_S)
                except TimeoutError:
                    result.hung += 1
                    return
                except (OSError, asyncio.IncompleteReadError):
                    result.dropped += 1
                    return
                result.statuses[status] += 1
                result.latency_us.setdefault(status, []).append((time.perf_counter() - start) * 1e6)
                problems = violations("POST", "/infer", status, headers, payload)
                if status not in (200, 503):
                    problems.append(f"{status} is neither an answer nor an overload refusal")
                if problems and len(result.problems) < 20:
                    result.problems.append(f"{status}: {problems}")
                elif problems:
                    result.problems.append("...")
            # every answer was read: anything more on the connection is a second answer
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(reader.read(1), 0.3)
                result.extra += len(extra)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    result.elapsed_s = time.monotonic() - started
    return result


@pytest.mark.parametrize("budget_ms", ["5", "0.5"])
def test_burst_of_160_connections_is_admitted_or_refused_at_once(
    artifacts_dir: Path, budget_ms: str
) -> None:
    with start_server(artifacts_dir, workers=2, args=["--latency-budget-ms", budget_ms]) as server:
        result = asyncio.run(burst(server.port, BURST_S, seed=int(float(budget_ms) * 10)))
        print("\n" + result.report(f"burst, {CONNECTIONS} connections, budget {budget_ms} ms"))
        for problem in result.problems[:5]:
            print("  ", problem)
        assert result.hung == 0 and result.dropped == 0, result.report("burst")
        assert result.extra == 0, "a request was answered more than once"
        assert sum(result.statuses.values()) == result.sent, "a request went unanswered"
        assert not result.problems, result.problems[:5]
        assert result.statuses[200] > 0, result.report("burst")
