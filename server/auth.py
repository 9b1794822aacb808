"""API keys: built once at start-up from the configuration, checked in constant time.

Client keys (``--api-key``, ``--api-keys``, one per line in ``--api-key-file``) open ``/infer``;
``--admin-api-key`` opens ``/admin/*``. Without an admin key, ``/admin/*`` takes the client
keys, as before there was one. With no key at all, both are open (``/healthz`` and
``/readyz`` always are).

Keys are kept only as SHA-256 digests: a presented key is hashed once and compared with every
configured digest by ``hmac.compare_digest``, without stopping at the first match, so the time
a check takes tells neither which key matched nor how long the keys are. Nothing here logs
or formats a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from server.config import ConfigError, ServerConfig

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _encoded(key: str, source: str) -> bytes:
    if not key.isprintable() or any(c.isspace() for c in key) or not key.isascii():
        raise ConfigError(
            f"a key in {source} holds spaces or characters a header cannot carry; "
            "write printable ASCII without spaces, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return key.encode("ascii")


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"api_key_file {path}: cannot read it ({exc.__class__.__name__}); write the path of "
            "a readable file with one key per line"
        ) from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise ConfigError(
            f"api_key_file {path} holds no key; write one key per line (or leave the option "
            "out to serve without keys)"
        )
    return keys


class ApiKeys:
    """The configured keys, as digests. ``allows`` is on every request's path when keys are
    configured: one SHA-256 of the presented key and one comparison per configured key."""

    __slots__ = ("_admin", "_client")

    def __init__(self, client_keys: Iterable[bytes] = (), admin_key: bytes | None = None) -> None:
        self._client = tuple(_digest(key) for key in dict.fromkeys(client_keys) if key)
        self._admin = _digest(admin_key) if admin_key else None
        if self._admin is not None and self._admin in self._client:
            raise ConfigError("admin_api_key must differ from every client API key")

    @classmethod
    def from_config(cls, config: ServerConfig) -> ApiKeys:
        """Every client key (``api_key``, ``api_keys``, the lines of ``api_key_file``) and
        the admin key. Reads the key file: call once, at start-up."""
        client: list[bytes] = []
        if config.api_key:
            client.append(_encoded(config.api_key, "api_key"))
        client.extend(_encoded(key, "api_keys") for key in config.api_keys if key)
        if config.api_key_file is not None:
            source = f"api_key_file {config.api_key_file}"
            client.extend(_encoded(key, source) for key in read_key_file(config.api_key_file))
        admin = _encoded(config.admin_api_key, "admin_api_key") if config.admin_api_key else None
        return cls(client, admin)

    @property
    def required(self) -> bool:
        """Whether ``/infer`` needs a key."""
        return bool(self._client)

    @property
    def admin_required(self) -> bool:
        return self._admin is not None or bool(self._client)

    @property
    def separate_admin_key(self) -> bool:
        return self._admin is not None

    def __len__(self) -> int:
        return len(self._client)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._client)} client keys, admin key: {self._admin is not None})"

    def allows(self, presented: bytes | None) -> bool:
        """Whether a request presenting this key (None: none) may call ``/infer``."""
        if not self._client:
            return True
        if presented is None:
            return False
        return _matches_any(_digest(presented), self._client)

    def admin_allows(self, presented: bytes | None) -> bool:
        """Whether a request presenting this key may call ``/admin/*``: the admin key if one is
        configured, else any client key (open if there is none)."""
        if self._admin is None:
            return self.allows(presented)
        if presented is None:
            return False
        return _matches_any(_digest(presented), (self._admin,))


def _matches_any(digest: bytes, configured: tuple[bytes, ...]) -> bool:
    found = False
    for candidate in configured:  # no early exit: every key costs the same time
        found |= hmac.compare_digest(digest, candidate)
    return found


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


_KEY_FLAGS = ("--api-key", "--api-keys", "--admin-api-key")


def startup_warnings(config: ServerConfig, keys: ApiKeys, argv: Sequence[str] = ()) -> list[str]:
    """What the operator must hear at start-up about access control (none of it names a key).
    ``argv``: the command line, where a key is readable by every local user."""
    warnings = []
    flags = sorted({arg.split("=", 1)[0] for arg in argv} & set(_KEY_FLAGS))
    if flags:
        warnings.append(
            f"{', '.join(flags)} on the command line: every local user can read it in the "
            "process list; use the PIS_* environment variable or --api-key-file instead"
        )
    if not is_loopback(config.host) and not keys.required:
        warnings.append(
            f"SECURITY: bound to {config.host}:{config.port}, reachable from other machines, "
            "WITHOUT AN API KEY: anyone who reaches this port can run /infer and /admin/reload. "
            "Set --api-key-file (or PIS_API_KEY) and --admin-api-key, or bind 127.0.0.1."
        )
    elif keys.required and not keys.separate_admin_key:
        warnings.append(
            "client API keys without --admin-api-key: /admin/* accepts every client key; set "
            "--admin-api-key (or PIS_ADMIN_API_KEY) to keep reloads to operators"
        )
    path = config.api_key_file
    if path is not None and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"api_key_file {path} is readable by other users; chmod 600 it")
    return warnings
