"""server.auth: several client keys (flag, environment, file), a separate admin key, constant-
time comparison, no key in any repr, JSON handed to workers or error message, and the
start-up warnings."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import orjson
import pytest

from server.auth import ApiKeys, is_loopback, read_key_file, startup_warnings
from server.config import ConfigError, ServerConfig, config_from_json_dict, load_config

CLIENT_KEYS = ("k-alpha-0123456789", "k-beta-0123456789", "k-gamma-0123456789")
ADMIN_KEY = "adm-0123456789abcdef"


def key_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def test_every_configured_key_is_accepted_and_nothing_else() -> None:
    keys = ApiKeys([key.encode() for key in CLIENT_KEYS])
    assert keys.required and len(keys) == 3
    for key in CLIENT_KEYS:
        assert keys.allows(key.encode())
    for wrong in (b"k-alpha-012345678", b"k-alpha-0123456789x", b"", b"K-ALPHA-0123456789"):
        assert not keys.allows(wrong)
    assert not keys.allows(None)


def test_without_keys_everything_is_open() -> None:
    keys = ApiKeys()
    assert not keys.required and not keys.admin_required
    assert keys.allows(None) and keys.allows(b"anything")
    assert keys.admin_allows(None)


def test_admin_key_is_separate_from_client_keys() -> None:
    keys = ApiKeys([CLIENT_KEYS[0].encode()], ADMIN_KEY.encode())
    assert keys.admin_allows(ADMIN_KEY.encode())
    assert not keys.admin_allows(CLIENT_KEYS[0].encode())
    assert not keys.admin_allows(None)
    assert not keys.allows(ADMIN_KEY.encode()), "the admin key is not a client key"
    assert keys.allows(CLIENT_KEYS[0].encode())


def test_admin_key_alone_leaves_infer_open() -> None:
    keys = ApiKeys([], ADMIN_KEY.encode())
    assert keys.allows(None)
    assert not keys.admin_allows(None) and keys.admin_allows(ADMIN_KEY.encode())


def test_without_an_admin_key_admin_takes_the_client_keys() -> None:
    keys = ApiKeys([CLIENT_KEYS[1].encode()])
    assert keys.admin_allows(CLIENT_KEYS[1].encode())
    assert not keys.admin_allows(b"nope") and not keys.admin_allows(None)


def test_admin_key_equal_to_a_client_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        ApiKeys([ADMIN_KEY.encode()], ADMIN_KEY.encode())


def test_a_match_compares_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit on the first match: the check costs the same whichever key it is."""
    calls: list[int] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a))
        return compare(a, b)

    keys = ApiKeys([key.encode() for key in CLIENT_KEYS])
    monkeypatch.setattr("server.auth.hmac.compare_digest", counting)
    assert keys.allows(CLIENT_KEYS[0].encode())
    assert calls == [32, 32, 32], "every comparison is of two SHA-256 digests"
    calls.clear()
    assert not keys.allows(b"x")
    assert calls == [32, 32, 32]


def test_keys_come_from_flag_environment_and_file_together(tmp_path: Path) -> None:
    path = key_file(tmp_path, "# rotated 2026-11-30", "", f"  {CLIENT_KEYS[2]}  ", CLIENT_KEYS[1])
    config = load_config(
        ["--api-key", CLIENT_KEYS[0], "--api-key-file", str(path)],
        {"PIS_API_KEYS": f"{CLIENT_KEYS[1]}, extra-key-42", "PIS_ADMIN_API_KEY": ADMIN_KEY},
    )
    assert config.api_keys == (CLIENT_KEYS[1], "extra-key-42")
    keys = ApiKeys.from_config(config)
    assert len(keys) == 4  # the duplicate counted once
    for key in (*CLIENT_KEYS, "extra-key-42"):
        assert keys.allows(key.encode())
    assert not keys.allows(b"# rotated 2026-11-30")
    assert keys.admin_allows(ADMIN_KEY.encode()) and not keys.admin_allows(b"extra-key-42")


def test_pis_api_key_alone_still_works() -> None:
    keys = ApiKeys.from_config(load_config([], {"PIS_API_KEY": "s3cret"}))
    assert keys.allows(b"s3cret") and not keys.allows(b"s3cre")
    assert not ApiKeys.from_config(load_config([], {"PIS_API_KEY": ""})).required


def test_key_file_errors_say_what_to_write_and_name_no_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="holds no key"):
        read_key_file(key_file(tmp_path, "# only a comment", ""))
    bad = key_file(tmp_path, "has a space-secret")
    with pytest.raises(ConfigError, match="printable ASCII") as caught:
        ApiKeys.from_config(ServerConfig(api_key_file=bad))
    assert "space-secret" not in str(caught.value)


def test_no_key_in_repr_or_in_what_workers_get(tmp_path: Path) -> None:
    path = key_file(tmp_path, CLIENT_KEYS[2])
    config = ServerConfig(
        api_key=CLIENT_KEYS[0],
        api_keys=(CLIENT_KEYS[1],),
        api_key_file=path,
        admin_api_key=ADMIN_KEY,
    )
    data = config.to_json_dict()
    shown = repr(config) + orjson.dumps(data).decode() + repr(ApiKeys.from_config(config))
    for secret in (*CLIENT_KEYS, ADMIN_KEY):
        assert secret not in shown
    assert str(path) not in orjson.dumps(data).decode(), "workers need not know the file"
    worker_config = config_from_json_dict(orjson.loads(orjson.dumps(data)))
    assert not ApiKeys.from_config(worker_config).required


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("server.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_start_up_warns_loudly_on_an_open_public_bind(tmp_path: Path) -> None:
    open_public = startup_warnings(ServerConfig(host="0.0.0.0"), ApiKeys())
    assert len(open_public) == 1 and "WITHOUT AN API KEY" in open_public[0]
    assert startup_warnings(ServerConfig(host="127.0.0.1"), ApiKeys()) == []

    keyed = ServerConfig(host="0.0.0.0", api_key=CLIENT_KEYS[0])
    (message,) = startup_warnings(keyed, ApiKeys.from_config(keyed))
    assert "--admin-api-key" in message and CLIENT_KEYS[0] not in message

    both = ServerConfig(host="0.0.0.0", api_key=CLIENT_KEYS[0], admin_api_key=ADMIN_KEY)
    assert startup_warnings(both, ApiKeys.from_config(both)) == []
    local = ServerConfig(host="127.0.0.1", api_key=CLIENT_KEYS[0])  # on loopback too
    (message,) = startup_warnings(local, ApiKeys.from_config(local))
    assert "--admin-api-key" in message and CLIENT_KEYS[0] not in message

    shared = key_file(tmp_path, CLIENT_KEYS[0])
    os.chmod(shared, 0o644)
    config = ServerConfig(api_key_file=shared, admin_api_key=ADMIN_KEY)
    (message,) = startup_warnings(config, ApiKeys.from_config(config))
    assert "chmod 600" in message


def test_start_up_warns_of_keys_on_the_command_line() -> None:
    argv = ["--port", "9000", f"--api-key={CLIENT_KEYS[0]}", "--admin-api-key", ADMIN_KEY]
    config = load_config(argv, {})
    (message,) = startup_warnings(config, ApiKeys.from_config(config), argv)
    assert "--admin-api-key, --api-key on the command line" in message
    assert CLIENT_KEYS[0] not in message and ADMIN_KEY not in message
    from_file = ["--api-key-file", "keys.txt"]
    assert startup_warnings(ServerConfig(), ApiKeys(), from_file) == []


def test_server_refuses_to_start_with_an_unreadable_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main

    code = main(["--api-key-file", str(tmp_path / "none.txt"), "--artifacts", str(tmp_path)])
    assert code == 2
    assert "api_key_file" in capsys.readouterr().err
