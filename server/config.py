"""The one configuration object, built once from flags and environment.

Every knob has a flag and a ``PIS_*`` environment variable; flags win. Validation happens
here, at start-up, with messages that say what to write instead.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.spec import SPECS


class BalancerStrategy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    POWER_OF_TWO = "power_of_two"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = None
    artifacts_dir: Path = Path("artifacts")
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    fronts: int = 1
    # Set by the supervisor of several fronts for each front it starts (not for operators):
    # which front this process is, and where the fronts share their statistics.
    front_slot: int | None = None
    front_state_dir: Path | None = None
    balancer: BalancerStrategy = BalancerStrategy.LEAST_LOADED
    cache_size: int = 100_000
    cache_ttl_s: float = 3600.0
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    max_request_batch: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 2.0
    client_read_timeout_s: float = 10.0
    latency_budget_ms: float = 5.0
    breaker_failures: int = 5
    breaker_open_s: float = 5.0
    max_inflight_per_worker: int = 512
    worker_threads: int = 1
    inline_when_idle: bool = True
    fast_lane: bool = True
    busy_poll_us: int = 200
    warmup_calls: int = 200
    worker_start_timeout_s: float = 60.0
    shutdown_grace_s: float = 10.0
    # Secrets: left out of repr, blanked by to_json_dict (never handed to workers or logged);
    # server/auth.py turns them into digests once at start-up.
    api_key: str | None = field(default=None, repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: Path | None = None
    admin_api_key: str | None = field(default=None, repr=False)
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 100
    agent_weights: tuple[tuple[str, tuple[float, ...]], ...] = ()
    monitoring: bool = True
    stats_window_s: float = 60.0
    history_dir: Path | None = None
    alert_webhook_url: str | None = None
    log_level: str = "info"
    build_artifacts_if_missing: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def front_workers(self) -> int:
        """Inference workers of this front: ``workers`` split among the fronts, the first
        ones taking one more when it does not divide. 0: the front runs every row itself."""
        slot = self.front_slot or 0
        return self.workers // self.fronts + (1 if slot < self.workers % self.fronts else 0)

    @property
    def worker_slot_base(self) -> int:
        """The first worker slot of this front: slots are numbered across all fronts."""
        slot = self.front_slot or 0
        return slot * (self.workers // self.fronts) + min(slot, self.workers % self.fronts)

    def weights_for(self, model: str) -> tuple[float, ...] | None:
        return dict(self.agent_weights).get(model)

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data.update(_BLANK_SECRETS)  # never handed to workers or printed
        return data


#: the fields holding API keys (or naming where they are), blanked by to_json_dict
_BLANK_SECRETS: dict[str, Any] = {
    "api_key": None,
    "api_keys": (),
    "api_key_file": None,
    "admin_api_key": None,
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate(c: ServerConfig) -> None:
    _check(0 <= c.port <= 65535, f"port {c.port} is out of range; write a port from 0 to 65535")
    _check(
        c.grpc_port is None or 0 <= c.grpc_port <= 65535,
        f"grpc_port {c.grpc_port} is out of range; write a port from 0 to 65535, or leave it "
        "out to serve no gRPC",
    )
    _check(
        c.grpc_port is None or c.grpc_port == 0 or c.grpc_port != c.port,
        f"grpc_port {c.grpc_port} is the HTTP port too; give gRPC a port of its own",
    )
    _check(
        0 <= c.workers <= 64,
        f"workers={c.workers}; write a count from 0 (each front runs every row itself) to 64",
    )
    _check(1 <= c.fronts <= 64, f"fronts={c.fronts}; write a count from 1 to 64")
    _check(
        c.front_slot is None or 0 <= c.front_slot < c.fronts,
        f"front_slot={c.front_slot}; the supervisor numbers fronts from 0 to fronts - 1",
    )
    _check(c.cache_size >= 0, f"cache_size={c.cache_size}; write 0 to turn the cache off")
    _check(c.cache_ttl_s >= 0, f"cache_ttl_s={c.cache_ttl_s}; write a TTL in seconds >= 0")
    _check(
        1 <= c.max_batch_size <= 1024,
        f"max_batch_size={c.max_batch_size}; write a batch size from 1 to 1024",
    )
    _check(
        0 <= c.max_queue_delay_us <= 1_000_000,
        f"max_queue_delay_us={c.max_queue_delay_us}; write 0 (no waiting) up to 1000000",
    )
    _check(c.max_request_batch >= 1, "max_request_batch must be at least 1")
    _check(c.max_body_bytes >= 1024, "max_body_bytes must be at least 1024")
    _check(c.request_timeout_s > 0, "request_timeout_s must be > 0, e.g. 2.0")
    _check(
        c.client_read_timeout_s > 0,
        f"client_read_timeout_s={c.client_read_timeout_s}; write seconds, e.g. 10",
    )
    _check(
        0 <= c.latency_budget_ms <= 60_000,
        f"latency_budget_ms={c.latency_budget_ms}; write milliseconds, e.g. 5 (0 admits all)",
    )
    _check(
        c.breaker_failures >= 0,
        f"breaker_failures={c.breaker_failures}; write a count, e.g. 5 (0: no circuit breaker)",
    )
    _check(c.breaker_open_s > 0, f"breaker_open_s={c.breaker_open_s}; write seconds, e.g. 5")
    _check(
        c.max_inflight_per_worker >= c.max_batch_size,
        f"max_inflight_per_worker={c.max_inflight_per_worker} is below max_batch_size="
        f"{c.max_batch_size}; write at least the batch size",
    )
    _check(
        c.max_inflight_per_worker >= c.max_request_batch,
        f"max_inflight_per_worker={c.max_inflight_per_worker} is below max_request_batch="
        f"{c.max_request_batch}: a full batch request could never be admitted; write at least "
        f"{c.max_request_batch} or lower --max-request-batch",
    )
    _check(
        0 <= c.busy_poll_us <= 100_000,
        f"busy_poll_us={c.busy_poll_us}; write 0 (sleep at once) up to 100000",
    )
    _check(c.worker_threads >= 1, "worker_threads must be at least 1")
    _check(c.rate_limit_rps >= 0, "rate_limit_rps must be >= 0 (0 turns rate limiting off)")
    _check(c.rate_limit_burst >= 1, "rate_limit_burst must be at least 1")
    for model, weights in c.agent_weights:
        _check(model in SPECS, f"agent weights for unknown model {model!r}; known: {list(SPECS)}")
        n = len(SPECS[model].agents)
        _check(
            len(weights) == n and all(w >= 0 for w in weights) and sum(weights) > 0,
            f"agent weights for {model} must be {n} non-negative numbers, not all zero, "
            f"e.g. {model}=1,1,1",
        )
    _check(
        c.log_level in {"critical", "error", "warning", "info", "debug"},
        f"log_level={c.log_level!r}; write one of critical, error, warning, info, debug",
    )


def _parse_weights(text: str) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``tactical=1,1,2;strategic=1,1,1``"""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        model, sep, values = part.partition("=")
        if not sep:
            raise ConfigError(f"agent weights {part!r}: write MODEL=W1,W2,W3, e.g. tactical=1,1,2")
        try:
            weights = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"agent weights {part!r}: weights must be numbers") from None
        out.append((model.strip(), weights))
    return tuple(out)


def _parse_keys(text: str) -> tuple[str, ...]:
    """``KEY1,KEY2``: several client API keys."""
    return tuple(filter(None, (key.strip() for key in text.split(","))))


_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _BOOL_TRUE:
        return True
    if lowered in _BOOL_FALSE:
        return False
    raise ConfigError(f"{text!r} is not a boolean; write true or false")


def _converter(name: str, default: Any) -> Any:
    if name == "agent_weights":
        return _parse_weights
    if name == "balancer":
        return BalancerStrategy
    if name in {"artifacts_dir", "history_dir", "api_key_file", "front_state_dir"}:
        return Path
    if name in {"api_key", "admin_api_key", "alert_webhook_url"}:
        return str
    if name in {"grpc_port", "front_slot"}:
        return int
    if name == "api_keys":
        return _parse_keys
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def env_name(field_name: str) -> str:
    if field_name == "artifacts_dir":
        return "PIS_ARTIFACTS"
    return "PIS_" + field_name.upper()


def _defaults() -> dict[str, Any]:
    out = {}
    for f in fields(ServerConfig):
        out[f.name] = f.default_factory() if callable(f.default_factory) else f.default
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve the policy models. Every flag also reads PIS_<NAME> from the "
        "environment (e.g. PIS_CACHE_TTL_S); flags win.",
    )
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "artifacts_dir":
            flag = "--artifacts"
        if f.name in {"monitoring", "build_artifacts_if_missing", "inline_when_idle", "fast_lane"}:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None
            )
            continue
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper())
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Flags override ``PIS_*`` variables, which override defaults."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    defaults = _defaults()
    values: dict[str, Any] = {}
    for name, default in defaults.items():
        raw = args.get(name)
        source = f"--{name.replace('_', '-')}"
        if raw is None and env_name(name) in environ:
            raw = environ[env_name(name)]
            source = env_name(name)
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[name] = raw
            continue
        try:
            values[name] = _converter(name, default)(raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except ValueError:
            hint = ", ".join(s.value for s in BalancerStrategy) if name == "balancer" else ""
            raise ConfigError(
                f"{source}={raw!r} is not valid for {name}"
                + (f"; write one of {hint}" if hint else f"; write e.g. {default!r}")
            ) from None
    return ServerConfig(**values)


def config_from_json_dict(data: Mapping[str, Any]) -> ServerConfig:
    """The worker's copy of the config, as the front serialised it."""
    values = dict(data)
    values["artifacts_dir"] = Path(values["artifacts_dir"])
    for name in ("history_dir", "front_state_dir"):
        if values.get(name):
            values[name] = Path(values[name])
    values["balancer"] = BalancerStrategy(values["balancer"])
    values["agent_weights"] = tuple((m, tuple(w)) for m, w in values["agent_weights"])
    values["api_keys"] = tuple(values.get("api_keys", ()))
    return ServerConfig(**values)
