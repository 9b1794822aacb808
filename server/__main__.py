"""``python -m server``: build the artifacts if there are none, then serve."""

from __future__ import annotations

import logging
import subprocess
import sys

import uvicorn

from optimize.loader import ManifestError, verify_artifacts
from server.app import create_app
from server.auth import ApiKeys, startup_warnings
from server.config import ConfigError, ServerConfig, load_config
from server.fastlane import http_protocol
from server.fronts import reuseport_socket, unbindable


def ensure_artifacts(config: ServerConfig) -> None:
    manifest = config.artifacts_dir / "manifest.json"
    if manifest.exists() or not config.build_artifacts_if_missing:
        return
    logging.getLogger("server").info("no %s yet: running python -m optimize first", manifest)
    subprocess.run(
        [sys.executable, "-m", "optimize", "--out", str(config.artifacts_dir)], check=True
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:  # the key file is read here first, so that a bad one stops the start at once
        keys = ApiKeys.from_config(config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    args = list(sys.argv[1:] if argv is None else argv)
    if config.front_slot is None:  # a supervisor's fronts leave the warnings to it
        for warning in startup_warnings(config, keys, args):
            logging.getLogger("server").warning(warning)
    try:
        ensure_artifacts(config)
    except subprocess.CalledProcessError as exc:
        print(f"building artifacts failed ({exc}); see the optimizer's output", file=sys.stderr)
        return 1
    try:
        verify_artifacts(config.artifacts_dir)
    except ManifestError as exc:
        print(f"cannot serve {config.artifacts_dir}: {exc}", file=sys.stderr)
        return 3
    if config.front_slot is None:  # a front binds the ports its supervisor holds
        problem = unbindable(config.host, [config.port, config.grpc_port])
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
    if config.fronts > 1 and config.front_slot is None:
        from server.supervisor import supervise

        return supervise(config, args)
    app = create_app(config)
    settings = dict(
        loop="uvloop",
        http=http_protocol(app.runtime, fast_lane=config.fast_lane),
        proxy_headers=False,
        lifespan="on",
        access_log=False,
        log_level=config.log_level,
        timeout_graceful_shutdown=int(config.shutdown_grace_s),
        server_header=False,
        date_header=True,
    )
    if config.front_slot is None:
        uvicorn.run(app, host=config.host, port=config.port, **settings)
    else:  # one of several fronts: its own socket on the shared port
        sock = reuseport_socket(config.host, config.port)
        uvicorn.Server(uvicorn.Config(app, **settings)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
