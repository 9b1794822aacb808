"""Request bodies for the load generators.

A cold run must never send the same observation twice (so the server's cache is not what is
measured), yet pre-rendering hundreds of thousands of 60x7 JSON bodies would cost more
memory and start-up than the run itself. So a body is ``PREFIX + sequence + suffix[i]``:
``suffix`` holds ``templates`` pre-rendered random observations less their first value, and
the first value is the request's sequence number written as ``0.NNNNNNN``. Two requests with
the same template differ in their sequence by a multiple of ``templates`` (>= 1e-4 apart),
which float32 keeps apart, and templates of different runs come from different seeds.

A warm run cycles a fixed working set: sequence ``i % working_set`` on template
``i % working_set``, the same bytes every lap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spec import get_spec


class Mode(enum.StrEnum):
    COLD = "cold"
    WARM = "warm"


COLD_TEMPLATES = 2048
WARM_WORKING_SET = 64
SEQUENCE_LIMIT = 10_000_000  # 7 decimal digits after "0."
# Values as a trading client sends them: up to nine decimals (a body of a tactical
# observation is ~5.4 KB; with four decimals it was ~3.3 KB, and cheaper to parse).
DECIMALS = 9


def format_sequence(seq: int) -> str:
    return f"0.{seq % SEQUENCE_LIMIT:07d}"


@dataclass(frozen=True, slots=True)
class BodySet:
    model: str
    mode: Mode
    prefix: bytes
    suffixes: tuple[bytes, ...]

    def body(self, i: int) -> bytes:
        """The i-th request body of a run (i counts from 0)."""
        n = len(self.suffixes)
        seq = i % n if self.mode is Mode.WARM else i
        return self.prefix + format_sequence(seq).encode() + self.suffixes[i % n]

    def describe(self) -> dict:
        """What a run of these bodies sends, for its record and its printout."""
        sizes = [len(self.body(i)) for i in range(len(self.suffixes))]
        return {
            "model": self.model,
            "distinct": self.mode is Mode.COLD,
            "working_set": None if self.mode is Mode.COLD else len(self.suffixes),
            "decimals": DECIMALS,
            "bytes_mean": round(sum(sizes) / len(sizes)),
        }

    def write_lua_data(self, path: Path) -> None:
        """One suffix per line; the prefix travels as a wrk script argument."""
        path.write_bytes(b"\n".join(self.suffixes) + b"\n")


def _render_suffix(observation: np.ndarray) -> bytes:
    """The body after the first value: ``,v01,...],[v10,...],...]]}``."""
    rows = [[f"{v:.{DECIMALS}f}" for v in row] for row in observation.tolist()]
    rows[0][0] = ""  # the sequence number takes the first value's place
    return ("],[".join(",".join(row) for row in rows) + "]]}").encode()


def make_bodies(model: str, mode: Mode, seed: int, templates: int | None = None) -> BodySet:
    """Bodies for ``model`` in ``mode``; ``seed`` should differ between runs on one server."""
    spec = get_spec(model)
    count = templates or (COLD_TEMPLATES if mode is Mode.COLD else WARM_WORKING_SET)
    rng = np.random.default_rng(seed)
    # Market-like features: small centred values with an occasional larger move.
    data = rng.standard_normal((count, spec.rows, spec.features)).astype(np.float32)
    suffixes = tuple(_render_suffix(obs) for obs in data)
    prefix = f'{{"model":"{model}","observation":[['.encode()
    return BodySet(model=model, mode=mode, prefix=prefix, suffixes=suffixes)
