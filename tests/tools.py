"""External tools the tests run (promtool, prometheus): skipped locally when missing, a failure
in CI (CI=true), where every check must run."""

from __future__ import annotations

import importlib
import os
import shutil

import pytest


def required_binary(name: str, ci_reason: str, package: str = "prometheus") -> str:
    """``name``'s path on PATH (promtool and prometheus come with ``apt-get install
    prometheus``; wrk with its own package)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: {ci_reason}")
        pytest.skip(message)
    return path


def required_module(name: str, install: str) -> object:
    """``import name``, skipped locally when absent; in CI (CI=true) a failure, since
    ``make test`` installs the extras that bring it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} not installed ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: make test installs it, so CI must run this test")
        pytest.skip(message, allow_module_level=True)
