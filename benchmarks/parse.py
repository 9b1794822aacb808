"""Request parsing, in-process: ``python -m benchmarks.parse``.

Times, per tactical ``POST /infer`` body with values of 6 and of 9 decimals, what turns the
body into a float32 row:

- ``current``: the server's parser (``server.validation.RequestParser``): simdjson's tape,
  the numbers copied out as float64 in one call and cast (``server/simd_reader.py``);
- ``orjson path``: the same parser's path for bodies the fast reader is not sure of:
  orjson, then one ``struct`` pack per row (the current parser until the simdjson reader);
- ``before``: the parser before that (orjson, a row-length check, one pack of all 420
  numbers);
- ``msgspec``: a typed decoder straight into the request's shape (``msgspec.Struct`` with
  ``list[list[float]]``), then the same row packs (when msgspec is installed);
- ``orjson only``: ``orjson.loads`` alone, the floor of the orjson paths.

The candidates run in interleaved rounds (the order rotating), with the collector paused
while a round is timed; the table gives the median over rounds of the mean per call.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import struct
import sys
import time
from collections.abc import Callable

import numpy as np
import orjson

from models.spec import SPECS
from server.pool import MODEL_INDEX
from server.validation import RequestParser

Candidate = Callable[[bytes], object]


def body(decimals: int, seed: int = 0) -> bytes:
    spec = SPECS["tactical"]
    obs = np.random.default_rng(seed).standard_normal((spec.rows, spec.features))
    rows = ",".join("[" + ",".join(f"{v:.{decimals}f}" for v in row) + "]" for row in obs)
    return b'{"model":"tactical","observation":[' + rows.encode() + b"]}"


def _before() -> Candidate:
    spec = SPECS["tactical"]
    pack = struct.Struct(f"={spec.input_size}f").pack
    lengths = {spec.features}

    def parse(raw: bytes) -> bytes:
        doc = orjson.loads(raw)
        observation = doc["observation"]
        if len(observation) != spec.rows or set(map(len, observation)) != lengths:
            raise ValueError("shape")
        return pack(*itertools.chain.from_iterable(observation))

    return parse


def _msgspec() -> Candidate | None:
    try:
        import msgspec
    except ImportError:
        return None

    class Request(msgspec.Struct):
        model: str
        observation: list[list[float]] | None = None
        observations: list[list[list[float]]] | None = None

    decode = msgspec.json.Decoder(Request).decode
    pack_row = struct.Struct(f"={SPECS['tactical'].features}f").pack

    def parse(raw: bytes) -> bytes:
        return b"".join(itertools.starmap(pack_row, decode(raw).observation))

    return parse


def candidates() -> dict[str, Candidate]:
    parser = RequestParser(SPECS, MODEL_INDEX, 256)
    out: dict[str, Candidate] = {"current": parser.parse, "orjson path": parser.parse_orjson}
    out["before"] = _before()
    typed = _msgspec()
    if typed is not None:
        out["msgspec"] = typed
    out["orjson only"] = orjson.loads
    return out


def measure(calls: int, rounds: int) -> dict[int, dict[str, float]]:
    """Per decimals: candidate -> median µs per call."""
    results: dict[int, dict[str, float]] = {}
    parsers = candidates()
    for decimals in (6, 9):
        raw = body(decimals)
        times: dict[str, list[float]] = {name: [] for name in parsers}
        for parse in parsers.values():
            for _ in range(500):
                parse(raw)
        order = list(parsers)
        for k in range(rounds):
            for name in order[k % len(order) :] + order[: k % len(order)]:
                parse = parsers[name]
                gc.disable()
                start = time.perf_counter_ns()
                for _ in range(calls):
                    parse(raw)
                elapsed = time.perf_counter_ns() - start
                gc.enable()
                times[name].append(elapsed / calls / 1000)
        results[decimals] = {name: statistics.median(v) for name, v in times.items()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parse", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    results = measure(args.calls, args.rounds)
    names = list(next(iter(results.values())))
    print("us per tactical body (median of rounds)")
    print(f"{'decimals':<10}{'bytes':>7}" + "".join(f"{n:>13}" for n in names))
    for decimals, row in results.items():
        size = len(body(decimals))
        print(f"{decimals:<10}{size:>7}" + "".join(f"{row[n]:13.1f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
