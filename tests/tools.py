"""External tools the tests run (promtool, prometheus): skipped locally when missing, a failure
in CI (CI=true), where every check must run."""

from __future__ import annotations

import os
import shutil

import pytest


def required_binary(name: str, ci_reason: str, package: str = "prometheus") -> str:
    """``name``'s path on PATH (promtool and prometheus come with ``apt-get install
    prometheus``; wrk and gdb with their own packages)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: {ci_reason}")
        pytest.skip(message)
    return path
