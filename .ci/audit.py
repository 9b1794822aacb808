"""Audit the installed runtime dependencies for known vulnerabilities: ``make audit``.

Why not pip-audit: pip-audit asks PyPI's per-release JSON API (``/pypi/NAME/VERSION/json``) or
OSV (``api.osv.dev``). Where this project's CI runs, only the package registries are reached:
OSV's host does not resolve, and the per-release API answers 404 for every release, so
pip-audit reports "Dependency not found on PyPI and could not be audited" for each package,
then "No known vulnerabilities found" and exit 0 (a green that audited nothing; ``--strict``
turns it into a failure that says nothing either).

What this does instead, with the same advisory data (PyPI's, from the Python Packaging
Advisory Database and GitHub's): for each package in the closure of ``[project]
dependencies`` as installed in this interpreter, it asks the per-release API first (where it
works, the answer is exact) and otherwise the project API (``/pypi/NAME/json``), whose
``vulnerabilities`` are those of the latest release: exact for a package installed at its
latest release, which most of ours are. A package installed below its latest release cannot
be audited that way; it is listed as unaudited (``--strict`` fails on it).

Exit status: 0 nothing known, 1 a known vulnerability not in ``IGNORED``, 2 the audit could
not run (PyPI unreachable, or nothing could be audited, or ``--strict`` with unaudited ones).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/pypi"

#: Advisories we accept, by id (PYSEC-, GHSA- or CVE-), each with why. Entries are for what
#: we cannot upgrade and do not expose: e.g. a torch advisory about loading untrusted pickles
#: (torch.load): the server never runs torch (the optimizer does, offline, on our own seeded
#: checkpoints read with safetensors). Review each on every torch pin bump. None is needed
#: today: the audit finds no advisory against any audited runtime dependency.
IGNORED: dict[str, str] = {}

Fetch = Callable[[str], dict[str, Any] | None]  # URL -> JSON document, None for a 404


@dataclass
class Finding:
    package: str
    version: str
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    unaudited: str | None = None  # why not, when it could not be audited
    source: str = ""


def runtime_closure(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """Installed name -> version of every runtime dependency, transitively (extras and
    environment markers followed as this interpreter would)."""
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found: dict[str, str] = {}
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (another platform's dependency)
        new = name not in found
        found[name] = dist.version
        for text in dist.requires or ():
            child = Requirement(text)
            for wanted in ("", *requirement.extras) if new else requirement.extras:
                todo.append((child, wanted))
    return found


def _fetch_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _public(version: str) -> str:
    return Version(version).public  # "2.13.0+cpu" -> "2.13.0": advisories name public ones


def audit_package(name: str, version: str, fetch: Fetch) -> Finding:
    finding = Finding(name, version)
    public = _public(version)
    document = fetch(f"{PYPI}/{name}/{public}/json")
    if document is not None:
        finding.source = "release"
    else:
        document = fetch(f"{PYPI}/{name}/json")
        if document is None:
            finding.unaudited = "not on PyPI"
            return finding
        latest = document["info"]["version"]
        if Version(latest) != Version(public):
            finding.unaudited = f"installed {public}, PyPI's advisories here cover {latest} only"
            return finding
        finding.source = "latest"
    for vulnerability in document.get("vulnerabilities") or ():
        if vulnerability.get("withdrawn"):
            continue
        names = {vulnerability.get("id"), *(vulnerability.get("aliases") or ())}
        if names & set(IGNORED):
            finding.ignored.append(vulnerability)
        else:
            finding.vulnerabilities.append(vulnerability)
    return finding


def audit(packages: dict[str, str], fetch: Fetch = _fetch_json) -> list[Finding]:
    def one(item: tuple[str, str]) -> Finding:
        try:
            return audit_package(*item, fetch)
        except (OSError, ValueError, KeyError) as exc:
            return Finding(*item, unaudited=f"PyPI did not answer: {exc.__class__.__name__}")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, sorted(packages.items())))


def report(findings: Iterable[Finding], strict: bool = False) -> tuple[int, str]:
    findings = list(findings)
    lines, status = [], 0
    audited = [f for f in findings if f.unaudited is None]
    for f in findings:
        for v in f.vulnerabilities:
            fixed = ", ".join(v.get("fixed_in") or ()) or "no fixed release"
            lines.append(f"VULNERABLE {f.package} {f.version}: {v.get('id')} (fixed in {fixed})")
            status = 1
        for v in f.ignored:
            reason = next(
                IGNORED[n] for n in (v.get("id"), *(v.get("aliases") or ())) if n in IGNORED
            )
            lines.append(f"ignored    {f.package} {f.version}: {v.get('id')} ({reason})")
    unaudited = [f for f in findings if f.unaudited is not None]
    for f in unaudited:
        lines.append(f"unaudited  {f.package} {f.version}: {f.unaudited}")
    lines.append(
        f"{len(audited)} of {len(findings)} runtime dependencies audited, "
        f"{sum(len(f.vulnerabilities) for f in findings)} known vulnerabilities, "
        f"{sum(len(f.ignored) for f in findings)} ignored, {len(unaudited)} unaudited"
    )
    if status == 0 and (not audited or (strict and unaudited)):
        status = 2
    return status, "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python .ci/audit.py", description=__doc__)
    parser.add_argument("--strict", action="store_true", help="fail on unaudited packages")
    args = parser.parse_args(argv)
    status, text = report(audit(runtime_closure()), strict=args.strict)
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
