"""External tools the tests run (promtool, prometheus): skipped locally when missing, a failure
in CI (CI=true), where every check must run."""

from __future__ import annotations

import os
import shutil

import pytest


def required_binary(name: str, ci_reason: str) -> str:
    """``name``'s path on PATH (both tools come with ``apt-get install prometheus``)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: {ci_reason}")
        pytest.skip(message)
    return path
