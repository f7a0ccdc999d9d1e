"""`python -m mlserver_ipa.server FOLDER`: `mlserver start FOLDER` with the pipeline's guards, how every replica
of the pipeline is started (local cluster, profiler, tests, the runtime image).

What it adds to MLServer 1.7.1, through MLServer's own REST server options (no patching):

- it listens on 127.0.0.1 unless `settings.json` or `$MLSERVER_HOST` names a host (MLServer's default is
  every interface);
- every HTTP connection and request gets the request limits (`mlserver_ipa.limits.RequestLimits`: the
  `ipa_limits` object of `settings.json`, then `$IPA_LIMIT_<FIELD>`), gRPC messages are bounded by the same
  `max_body_bytes` and their metadata by `max_header_bytes`;
- writes (repository `load` / `unload` over REST and gRPC, the runtime's control `POST`) need the pipeline's token
  (`$IPA_TOKEN_FILE` or `$IPA_TOKEN`, `mlserver_ipa.auth`); without one they are refused (403). Reads,
  inference, health and metrics stay open;
- every request's arrival is stamped and an inference whose absolute deadline is gone, or cannot be met by the
  runtime's queue and service-time estimate, is answered 504 before its body is read
  (`mlserver_ipa.admission.DeadlineMiddleware`). MLServer has no hook of its own there: its
  `InferenceMiddleware` runs on the decoded `InferenceRequest` (after the JSON became pydantic objects, the cost
  to avoid for a request that will be shed), `settings.extensions` is metadata only, and custom handlers are
  appended after its own routes, so one cannot take over `/infer`. The wrap of its REST server's protocol is;
- its gRPC port is served by our own V2 servicer (`mlserver_ipa.grpc_server`: raw tensor contents straight to
  numpy, the same deadline shedding before decode, the token on repository load/unload) in place of MLServer's
  (`ReplicaServer`, the one subclass of `MLServer` here, swaps the server object it creates; MLServer is pinned
  at 1.7.1, whose `_create_servers` this relies on).

A bad limit or an unreadable token file ends it with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlserver_ipa.admission import DeadlineMiddleware
from mlserver_ipa.auth import load_token
from mlserver_ipa.grpc_server import GrpcServer
from mlserver_ipa.limits import RequestLimits
from mlserver_ipa.protocol import guard, uvicorn_options

LOOPBACK = "127.0.0.1"
SETTINGS_FILE = "settings.json"
LIMITS_KEY = "ipa_limits"
REPLICA_WRITES: list[tuple[str, str]] = [
    ("POST", r"/v2/repository/models/[^/]+/(load|unload)"),
    ("POST", r"/v2/models/[^/]+(/versions/[^/]+)?/control"),
]
"""Routes of a replica that change what it does; everything else is a read or an inference."""


def read_settings_file(folder: Path) -> dict[str, Any]:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


async def start(folder: Path) -> None:
    """Serve the model repository `folder` as `mlserver start` does, with the guards (see module doc)."""
    from mlserver.cli.serve import load_settings

    raw = read_settings_file(folder)
    limits_raw = raw.get(LIMITS_KEY) or {}
    if not isinstance(limits_raw, dict):
        raise ValueError(f"{folder / SETTINGS_FILE}: {LIMITS_KEY} must be an object")
    limits = RequestLimits.from_env(**limits_raw)
    token = load_token()
    settings, models = await load_settings(str(folder))
    if "host" not in raw and "MLSERVER_HOST" not in os.environ:
        settings.host = LOOPBACK
    settings._custom_rest_server_settings = uvicorn_options(
        limits, lambda app: guard(DeadlineMiddleware(app), limits, token, REPLICA_WRITES))
    server = replica_server(settings, limits, token)
    await server.start(models)


def replica_server(settings: Any, limits: RequestLimits, token: str | None) -> Any:
    """MLServer with our V2 gRPC server on its gRPC port (see module doc)."""
    from mlserver import MLServer

    class ReplicaServer(MLServer):  # type: ignore[misc]
        def _create_servers(self) -> None:
            super()._create_servers()
            self._grpc_server = GrpcServer(self._settings, self._data_plane, self._model_repository_handlers,
                                           limits=limits, token=token)

    return ReplicaServer(settings)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlserver_ipa.server", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the model repository (as for `mlserver start`)")
    args = parser.parse_args(argv)
    from mlserver.logging import configure_logger
    from mlserver.utils import install_uvloop_event_loop

    try:
        read_settings_file(args.folder)
        RequestLimits.from_env(**(read_settings_file(args.folder).get(LIMITS_KEY) or {}))
        load_token()
    except (ValueError, TypeError) as e:
        print(f"mlserver_ipa.server: {e}", file=sys.stderr)
        sys.exit(2)
    configure_logger()
    install_uvloop_event_loop()
    asyncio.run(start(args.folder))


if __name__ == "__main__":
    main()
