"""API keys against the real server: client keys from a file and the environment on /infer,
a separate admin key on /admin/reload, /healthz and /readyz open, no key in the log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import start_server

pytestmark = pytest.mark.slow

FILE_KEYS = ("file-key-one-7f3a9c", "file-key-two-51bd02")
ENV_KEY = "env-key-c0ffee-1234"
ADMIN_KEY = "admin-key-9e8d7c6b5a"
BODY = {"model": "tactical", "observation": [[0.25] * 7] * 60}


def test_keys_from_file_and_environment_and_a_separate_admin_key(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-keys"
    key_file.write_text("# one key per line\n" + "\n".join(FILE_KEYS) + "\n")
    key_file.chmod(0o600)
    env = {"PIS_API_KEY": ENV_KEY, "PIS_ADMIN_API_KEY": ADMIN_KEY}
    with start_server(
        artifacts_dir, workers=1, args=["--api-key-file", str(key_file)], env=env
    ) as server:
        infer = f"{server.url}/infer"
        for key in (*FILE_KEYS, ENV_KEY):
            answer = httpx.post(infer, json=BODY, headers={"x-api-key": key})
            assert answer.status_code == 200, (key, answer.text)
        bearer = httpx.post(infer, json=BODY, headers={"authorization": f"Bearer {FILE_KEYS[1]}"})
        assert bearer.status_code == 200
        for headers in ({}, {"x-api-key": "file-key-one"}, {"x-api-key": ADMIN_KEY}):
            refused = httpx.post(infer, json=BODY, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer"), "RFC 9110"

        for path in ("/healthz", "/readyz"):
            assert httpx.get(f"{server.url}{path}").status_code == 200, path

        reload = f"{server.url}/admin/reload"
        for headers in ({}, {"x-api-key": FILE_KEYS[0]}, {"x-api-key": ENV_KEY}):
            refused = httpx.post(reload, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = httpx.post(reload, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
        assert allowed.status_code == 200 and allowed.json()["status"] == "reloaded"

        log = server.log()
    for secret in (*FILE_KEYS, ENV_KEY, ADMIN_KEY):
        assert secret not in log
