"""The CI dependency audit (.ci/audit.py) on fake PyPI answers: no network here."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.support import ROOT


def load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


audit = load_audit()
PYPI = audit.PYPI
ADVISORY = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-0001"], "fixed_in": ["9.9"]}


def fake_pypi(documents: dict[str, dict[str, Any]]) -> Any:
    def fetch(url: str) -> dict[str, Any] | None:
        return documents.get(url)

    return fetch


def project(latest: str, *vulnerabilities: dict[str, Any]) -> dict[str, Any]:
    return {"info": {"version": latest}, "vulnerabilities": list(vulnerabilities)}


def test_a_vulnerable_latest_release_fails_the_audit() -> None:
    fetch = fake_pypi({f"{PYPI}/fastapi/json": project("1.0", ADVISORY)})
    findings = audit.audit({"fastapi": "1.0"}, fetch)
    status, text = audit.report(findings)
    assert status == 1
    assert "VULNERABLE fastapi 1.0: PYSEC-2099-1 (fixed in 9.9)" in text


def test_the_per_release_answer_wins_where_pypi_gives_it() -> None:
    fetch = fake_pypi(
        {
            f"{PYPI}/numpy/2.0.0/json": project("2.0.0", ADVISORY),
            f"{PYPI}/numpy/json": project("3.0.0"),
        }
    )
    (finding,) = audit.audit({"numpy": "2.0.0"}, fetch)
    assert finding.source == "release" and finding.vulnerabilities == [ADVISORY]


def test_an_older_release_is_unaudited_not_passed() -> None:
    fetch = fake_pypi(
        {f"{PYPI}/torch/json": project("2.15.0"), f"{PYPI}/uvicorn/json": project("0.5")}
    )
    findings = audit.audit({"torch": "2.13.0+cpu", "uvicorn": "0.5"}, fetch)
    status, text = audit.report(findings)
    assert status == 0
    assert "unaudited  torch 2.13.0+cpu: installed 2.13.0, PyPI's advisories" in text
    assert "1 of 2 runtime dependencies audited" in text
    assert audit.report(findings, strict=True)[0] == 2


def test_ignored_and_withdrawn_advisories_do_not_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audit.IGNORED, "CVE-2099-0001", "not reachable: we never call it")
    withdrawn = {"id": "GHSA-xxxx", "withdrawn": "2099-01-01T00:00:00Z"}
    fetch = fake_pypi({f"{PYPI}/torch/2.0/json": project("2.0", ADVISORY, withdrawn)})
    status, text = audit.report(audit.audit({"torch": "2.0"}, fetch))
    assert status == 0
    assert "ignored    torch 2.0: PYSEC-2099-1 (not reachable: we never call it)" in text
    assert "GHSA-xxxx" not in text


def test_nothing_audited_is_a_failure_not_a_pass() -> None:
    def unreachable(url: str) -> dict[str, Any] | None:
        raise OSError("no route to host")

    status, text = audit.report(audit.audit({"numpy": "2.0", "orjson": "3.0"}, unreachable))
    assert status == 2
    assert "PyPI did not answer: OSError" in text


def test_the_closure_holds_runtime_dependencies_only() -> None:
    closure = audit.runtime_closure()
    assert {"fastapi", "starlette", "numpy", "onnxruntime", "uvicorn"} <= set(closure)
    assert closure.keys().isdisjoint({"pytest", "scipy", "matplotlib", "prometheus-client"})
