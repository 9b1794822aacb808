"""The protocol benchmark's requests and arithmetic on fixed inputs: every pre-built request
decodes as its protocol's client would have sent it, no row repeats, the pair ratios and
the checks of ``ab``, the protocol table."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from benchmarks.__main__ import main
from benchmarks.stats import ab_checks, ab_summary, protocol_bars, vs_native
from benchmarks.tables import AB_COLUMNS, PROTOCOL_COLUMNS, ab_rows, protocol_rows
from benchmarks.wire import FLOAT32_STAMPS, GRPC_METHOD, Protocol, Stamp, build_requests
from server.oip_proto import inference_pb2 as pb


def decode(protocol: Protocol, headers: dict[str, str], body: bytes) -> tuple[list, np.ndarray]:
    """(shape as declared, the observations) of one request, read as the server reads it."""
    if protocol is Protocol.NATIVE:
        doc = orjson.loads(body)
        obs = np.array(doc["observations"] if "observations" in doc else [doc["observation"]])
        return list(obs.shape), obs.astype(np.float32)
    if protocol is Protocol.OIP_JSON:
        (tensor,) = orjson.loads(body)["inputs"]
        return tensor["shape"], np.array(tensor["data"], np.float32).reshape(tensor["shape"])
    if protocol is Protocol.OIP_BINARY:
        length = int(headers["Inference-Header-Content-Length"])
        doc = orjson.loads(body[:length])
        assert doc["parameters"] == {"binary_data_output": True}
        (tensor,) = doc["inputs"]
        assert tensor["parameters"]["binary_data_size"] == len(body) - length
        return tensor["shape"], np.frombuffer(body[length:], "<f4").reshape(tensor["shape"])
    request = pb.ModelInferRequest.FromString(body)
    (tensor,) = request.inputs
    shape = list(tensor.shape)
    return shape, np.frombuffer(request.raw_input_contents[0], "<f4").reshape(shape)


@pytest.mark.parametrize("protocol", list(Protocol))
@pytest.mark.parametrize("batch", [1, 5])
def test_requests_decode_and_every_row_is_new(protocol: Protocol, batch: int) -> None:
    requests = build_requests(protocol, "tactical", batch, seed=3)
    headers = dict(requests.headers)
    assert "Content-Type" not in headers or protocol is Protocol.NATIVE  # as tritonclient
    seen: set[bytes] = set()
    # twice round the templates: a repeat of a template must still change every row
    for i in range(2 * len(requests.templates) + 1):
        shape, obs = decode(protocol, headers, requests.body(i))
        assert shape == [batch, 60, 7] and np.isfinite(obs).all()
        for row in obs:
            seen.add(row.astype(np.float32).tobytes())
    assert len(seen) == batch * (2 * len(requests.templates) + 1)
    expected_path = {Protocol.NATIVE: "/infer", Protocol.GRPC: GRPC_METHOD}
    assert requests.path == expected_path.get(protocol, "/v2/models/tactical/infer")


def test_stamps_stay_distinct_in_float32() -> None:
    assert Stamp.FLOAT32.render(0) == np.float32(1.0).tobytes()
    values = np.frombuffer(b"".join(Stamp.FLOAT32.render(s) for s in range(0, 70_000, 7)), "<f4")
    assert len(set(values.tolist())) == len(values) and (values >= 1).all() and (values < 2).all()
    assert Stamp.FLOAT32.render(FLOAT32_STAMPS + 5) == Stamp.FLOAT32.render(5)
    assert Stamp.DECIMAL.render(42) == b"0.0000042"


def test_wrk_data_holds_every_chunk_in_order(tmp_path) -> None:
    requests = build_requests(Protocol.OIP_BINARY, "strategic", 3, seed=1)
    blob, index = tmp_path / "b", tmp_path / "i"
    requests.write_wrk_data(blob, index)
    data, pos = blob.read_bytes(), 0
    lines = index.read_text().splitlines()
    assert len(lines) == len(requests.templates)
    for line, chunks in zip(lines, requests.templates, strict=True):
        lengths = [int(n) for n in line.split()]
        assert len(lengths) == 3 + 1
        for n, chunk in zip(lengths, chunks, strict=True):
            assert data[pos : pos + n] == chunk
            pos += n
    assert pos == len(data)


def record(target: str, pair: int, clients: int, rps: float, p50: float, p99: float) -> dict:
    return {
        "target": target, "mode": "cold", "concurrency": clients, "duration_s": 1,
        "generator": "wrk", "requests": int(rps), "rps": rps, "pair": pair, "errors": {},
        "latency_us": {"p50": p50, "p99": p99, "p99_9": 2 * p99, "max": 3 * p99},
        "cpu": {"server_s": 1.0, "loadgen_s": 0.2, "other_s": 0.0},
    }  # fmt: skip


def ab_pairs() -> list[dict]:
    return [
        record("baseline", 0, 1, 10_000, 100, 150),
        record("candidate", 0, 1, 10_000, 104, 150),
        record("candidate", 1, 1, 9_000, 110, 180),  # a slow moment hits both sides
        record("baseline", 1, 1, 9_000, 100, 160),
        record("candidate", 2, 1, 9_000, 103, 170),  # an incomplete pair is left out
        record("baseline", 0, 16, 20_000, 700, 1400),
        record("candidate", 0, 16, 19_200, 720, 1500),
        record("candidate", 1, 16, 19_000, 700, 1500),
        record("baseline", 1, 16, 20_000, 690, 1450),
    ]


def test_ab_takes_the_median_of_the_ratios_within_each_pair() -> None:
    summary = ab_summary(ab_pairs())
    assert [(s["concurrency"], s["pairs"]) for s in summary] == [(1, 2), (16, 2)]
    one, sixteen = summary
    assert [p["pair"] for p in one["per_pair"]] == [1, 2]
    assert one["per_pair"][1]["ratio"]["p50"] == pytest.approx(1.1)
    assert one["ratio"]["p50"] == pytest.approx((1.04 + 1.10) / 2)
    assert one["ratio"]["p99"] == pytest.approx((1.0 + 180 / 160) / 2)
    assert one["baseline"]["p50"] == 100 and one["candidate"]["p50"] == pytest.approx(107)
    assert sixteen["ratio"]["rps"] == pytest.approx((0.96 + 0.95) / 2)
    checks = ab_checks(summary, tolerance=0.05)
    assert [(c.name.split(":")[0], c.met) for c in checks] == [
        ("cold@1", False),  # p50 x1.07
        ("cold@1", False),  # p99 x1.06
        ("cold@16", True),  # rps x0.955 is within 5%
    ]
    assert [c.met for c in ab_checks(summary, tolerance=0.10)] == [True, True, True]
    rows = ab_rows(summary)
    assert all(len(r) == len(AB_COLUMNS) for r in rows)
    assert [r[2] for r in rows[:5]] == [
        "baseline, median of 2",
        "candidate, median of 2",
        "ratio, pair 1",
        "ratio, pair 2",
        "ratio, median of pairs",
    ]


def protocol_run(protocol: str, batch: int, clients: int, p50: float, errors=None) -> dict:
    run = record(f"ours:{protocol}:b{batch}", 0, clients, 1000, p50, 2 * p50)
    del run["pair"]
    run.update(protocol=protocol, batch=batch, rows_per_s=1000.0 * batch, errors=errors or {})
    return run


def test_protocol_table_and_bars() -> None:
    runs = [
        protocol_run("native", 1, 1, 90),
        protocol_run("oip_binary", 1, 1, 120),
        protocol_run("grpc", 1, 1, 300, {"UNAVAILABLE": 2}),
        protocol_run("grpc", 64, 1, 900),
    ]
    assert vs_native(runs) == {0: 1.0, 1: pytest.approx(120 / 90), 2: pytest.approx(300 / 90),
                               3: None}  # fmt: skip
    rows = protocol_rows(runs)
    assert all(len(r) == len(PROTOCOL_COLUMNS) for r in rows)
    assert rows[1][:3] == ["oip_binary", "1", "1"] and rows[1][12] == "x1.33"
    assert rows[3][6] == "64,000" and rows[3][12] == "n/a" and rows[2][11] == "UNAVAILABLE: 2"
    assert rows[0][13] == "1,000"  # 1 CPU-s over 1,000 requests
    binary, clean = protocol_bars(runs)
    assert binary.met is True and "p50 120 us" in binary.detail
    assert clean.met is False and "2 errors in 1 of 4 runs" in clean.detail
    assert protocol_bars(runs[:1])[0].met is None


def test_show_prints_protocol_and_ab_documents(tmp_path, capsys) -> None:
    protocols = tmp_path / "protocols.json"
    protocols.write_bytes(orjson.dumps({"kind": "benchmark", "command": "protocols",
        "machine": {"cores": 2}, "runs": [protocol_run("oip_binary", 1, 1, 150)]}))  # fmt: skip
    assert main(["show", "--markdown", str(protocols)]) == 0
    out = capsys.readouterr().out
    assert "| oip_binary | 1 | 1 |" in out and "- **met**: OIP binary batch 1" in out
    ab = tmp_path / "ab.json"
    trees = {"baseline": {"path": "/a", "commit": "abc"}, "candidate": {"path": "/b",
             "commit": "def"}}  # fmt: skip
    ab.write_bytes(orjson.dumps({"kind": "benchmark", "command": "ab", "machine": {"cores": 2},
        "runs": [], "pairs": ab_pairs(), "ab": {"trees": trees, "tolerance": 0.05,
        "summary": ab_summary(ab_pairs())}}))  # fmt: skip
    assert main(["show", str(ab)]) == 0
    out = capsys.readouterr().out
    assert "baseline: /a at abc" in out and "ratio, median of pairs" in out
    assert "[met    ] cold@16: throughput within 5%" in out


def test_ab_refuses_a_tree_that_is_not_the_project(tmp_path, capsys) -> None:
    assert main(["ab", "--baseline-tree", str(tmp_path), "--artifacts", str(tmp_path)]) == 2
    assert "no server/__main__.py" in capsys.readouterr().err
