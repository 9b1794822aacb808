"""The in-process layer benchmarks stay runnable: each answers every request it feeds."""

from __future__ import annotations

from pathlib import Path

import uvloop

from benchmarks import coldcache, httplayer, parse


def test_httplayer_times_both_protocols_and_each_answered_every_request() -> None:
    result = uvloop.run(httplayer.measure(calls=50, rounds=2))  # raises if one did not answer
    assert set(result) == {"fast lane (uvicorn + hooks)", "bare httptools"}
    assert all(us > 0 for us in result.values())


def test_coldcache_times_every_case(artifacts_dir: Path) -> None:
    result = coldcache.measure(artifacts_dir, calls=20, rounds=1)
    assert len(result) == 5
    assert all(0 < p50 <= p99 for p50, p99 in result.values())


def test_parse_times_every_candidate_on_both_bodies() -> None:
    result = parse.measure(calls=5, rounds=2)
    assert set(result) == {6, 9}
    for times in result.values():
        assert {"current", "orjson path", "before", "orjson only"} <= set(times)
        assert all(us > 0 for us in times.values())
