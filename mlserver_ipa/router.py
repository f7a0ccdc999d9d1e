"""The pipeline router: the whole pipeline served as one V2 model, when no Seldon executor is there.

`POST /v2/models/<pipeline>/infer` takes a V2 request (JSON tensors) for the first stage and answers with the
last stage's outputs. Between stages the tensor named `output` becomes the next stage's `input`; other outputs
of inner stages come back too, named `<stage>.<name>` (a detector's boxes beside the classifier's classes).

Per request, per stage: a replica group is drawn by its load share and the replica of that group with the
fewest outstanding requests gets the request (`RouteTable`). The remaining deadline (`parameters.deadline_ms`,
counted from the request's arrival here) is passed to every stage, decremented by the time spent so far and by
the reply reserve (`--reply-reserve-ms`, default 5: kept for the answer's way back, `DispatchSettings`); a
replica that cannot be reached or is overloaded (503) is replaced by another one of the stage while the
deadline allows (inference is idempotent). Errors come in the V2 shape `{"error": "..."}`:

    400  the request is not a V2 request, or a stage refused it (the stage's message)
    404  another model name than the pipeline's
    502  a stage failed (its replica answered 5xx, or none could be reached)
    503  a stage has no ready replica
    504  the deadline is gone (before a stage, or a stage said it cannot meet it)

The table is changed in place: by the executor in the same process (`await router.update_stage(...)`), or over
HTTP (`PUT /router/stages/<stage>` with a `StageRoute` body; `RouterClient` does it) when the router runs as
its own process: `python -m mlserver_ipa.router --pipeline NAME --stages a,b --port 8080`. The executor also
sends the `host:port` of every replica it started (`PUT /router/upstreams` with an `UpstreamList`; `set_upstreams`):
from then on a route naming any other address is refused 403, as one naming another host always is (started with
`--require-upstreams`, as `ipa up` starts it, every route naming a replica is refused until then); a route that
is not well formed is 422 (`route_table`). Both writes need the pipeline's token (`mlserver_ipa.auth`: 401, or 403
without one). Reads stay open; every connection has the request limits (`limits`).
`GET /metrics` has per-pipeline request counts and latency histograms (Prometheus); arrivals are counted as each
request's headers are parsed (`accept_arrivals`; over gRPC before the message is read, `router_grpc`), and the budgets requests arrived with are exported over a
window (`--budget-window-s`, `arrival_budgets`) for the adapter's cl_max.

With `--grpc-port` the process serves the pipeline over V2 gRPC too, in the same event loop (`router_grpc`;
`tritonclient.grpc` works against it unmodified). Replicas are called over gRPC with raw tensor contents when
their route says so (`StageRoute.protocol`, default `grpc`, and a replica `grpc_port`), else over REST.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlserver_ipa.auth import WriteAuth, bearer, load_token
from mlserver_ipa.deadlines import (
    DEADLINE_HEADER,
)
from mlserver_ipa.dispatch import DispatchSettings
from mlserver_ipa.heap import GcPauses, freeze_startup_heap, return_freed_memory
from mlserver_ipa.limits import LimitsMiddleware, RequestLimits
from mlserver_ipa.pipeline_router import (
    ROUTER_WRITES,
    PipelineError,
    PipelineRouter,
)
from mlserver_ipa.protocol import uvicorn_options
from mlserver_ipa.route_table import (
    ForbiddenUpstream,
    RouterStatus,
    StageRoute,
    StageStatus,
    UpstreamList,
    Upstreams,
)
from mlserver_ipa.router_grpc import start_grpc
from mlserver_ipa.wire_tensors import listed_all

__all__ = ["PipelineError", "PipelineRouter", "RouterClient", "create_app", "main", "serve", "serve_app"]


ARRIVAL_STATE = "ipa_arrival"
"""Where `accept_arrivals` leaves a request's `Arrival` in its ASGI scope's state."""


def accept_arrivals(router: PipelineRouter) -> Callable[[dict[str, Any]], None]:
    """The connection's `on_request` hook (`protocol`): every inference request of the pipeline is counted and
    stamped (`PipelineRouter.arrived`) as its headers are parsed, before its body is read or its task scheduled:
    under overload the count is of what arrives, shed requests included, not of what the loop got round to."""
    path = f"/v2/models/{router.pipeline}/infer"

    def on_request(scope: dict[str, Any]) -> None:
        if scope.get("method") == "POST" and scope.get("path") == path:
            deadline = next((v for k, v in scope.get("headers") or () if k == DEADLINE_HEADER.encode()), None)
            scope.setdefault("state", {})[ARRIVAL_STATE] = router.arrived(
                None if deadline is None else deadline.decode("latin-1"))

    return on_request


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(router: PipelineRouter, token: str | None = None) -> FastAPI:
    """The router's HTTP surface: V2 inference, health, metrics, and the table under `/router`; writing the
    table needs `token` (refused with 403 when None)."""
    app = FastAPI(title=f"IPA pipeline router: {router.pipeline}", docs_url="/router/docs",
                  openapi_url="/router/openapi.json")
    app.add_middleware(WriteAuth, token=token, writes=ROUTER_WRITES)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        return _error(422, where)

    def _unknown(name: str) -> JSONResponse:
        return _error(404, f"model {name!r} not found; this router serves {router.pipeline!r}")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        if name != router.pipeline:
            return _unknown(name)
        arrival = request.scope.get("state", {}).get(ARRIVAL_STATE) or router.arrived(
            request.headers.get(DEADLINE_HEADER))
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as e:
            router.m_requests.labels(router.pipeline, "400").inc()  # every arrival is answered and counted
            return _error(400, f"body is not JSON: {e}")
        try:
            result = await router.infer(body, arrival)
            result["outputs"] = listed_all(result["outputs"])  # raw contents from a gRPC hop, as JSON
        except PipelineError as e:
            return _error(e.status, str(e))
        except ValueError as e:
            return _error(502, f"a stage answered a bad tensor: {e}")
        return Response(orjson.dumps(result), media_type="application/json")

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if router.ready else 503)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        if name != router.pipeline:
            return _unknown(name)
        return Response(status_code=200 if router.ready else 503)

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> Response:
        if name != router.pipeline:
            return _unknown(name)
        return JSONResponse({"name": router.pipeline, "platform": "ipa-pipeline", "versions": [],
                             "parameters": {"stages": ",".join(router.stages)}})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(router.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/router")
    async def table() -> RouterStatus:
        return router.status()

    @app.get("/router/stages/{stage}")
    async def get_stage(stage: str) -> Response:
        if stage not in router.stages:
            return _error(404, f"no stage {stage!r}; stages: {', '.join(router.stages)}")
        return JSONResponse((await router.stage_status(stage)).model_dump())

    @app.put("/router/stages/{stage}")
    async def put_stage(stage: str, route: StageRoute) -> Response:
        if stage not in router.stages:
            return _error(404, f"no stage {stage!r}; stages: {', '.join(router.stages)}")
        try:
            return JSONResponse((await router.update_stage(stage, route)).model_dump())
        except ForbiddenUpstream as e:
            return _error(403, str(e))
        except ValueError as e:
            return _error(422, str(e))

    @app.put("/router/upstreams")
    async def put_upstreams(upstreams: UpstreamList) -> Response:
        await router.set_upstreams(upstreams.addresses)
        return JSONResponse({"addresses": sorted(set(upstreams.addresses))})

    return app


class RouterClient:
    """The table of a router in another process, with the same `update_stage`/`stage_status` as the router."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        """`token`: the pipeline's token, which table writes need."""
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=bearer(token))

    async def update_stage(self, stage: str, route: StageRoute) -> StageStatus:
        resp = await self._client.put(f"/router/stages/{stage}", json=route.model_dump())
        resp.raise_for_status()
        return StageStatus.model_validate(resp.json())

    async def set_upstreams(self, addresses: Collection[str]) -> None:
        resp = await self._client.put("/router/upstreams", json={"addresses": sorted(addresses)})
        resp.raise_for_status()

    async def stage_status(self, stage: str) -> StageStatus:
        resp = await self._client.get(f"/router/stages/{stage}")
        resp.raise_for_status()
        return StageStatus.model_validate(resp.json())

    async def aclose(self) -> None:
        await self._client.aclose()


GRPC_GRACE_S = 5.0
KEEP_ALIVE_S = 75  # idle connections kept longer than clients keep theirs (httpx: 5 s): none sends on a closing one


@contextlib.asynccontextmanager
async def serve_app(app: Any, host: str = "127.0.0.1", port: int = 8080, limits: RequestLimits | None = None,
                    on_request: Callable[[dict[str, Any]], None] | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app in the running event loop, with the request limits (`RequestLimits.from_env()` when
    None) on every connection (and `on_request`, `protocol`); yields its base URL (port 0: a free one); stops on
    exit.

    Raises OSError when it cannot listen (the port is taken, ...).
    """
    import uvicorn

    limits = limits or RequestLimits.from_env()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                           access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                                           **uvicorn_options(limits, lambda a: LimitsMiddleware(a, limits),
                                                             on_request=on_request)))

    async def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits the process when it cannot bind: not ours to end
            await server.serve()

    task = asyncio.create_task(run())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"could not listen on {host}:{port}")
            await asyncio.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def serve(router: PipelineRouter, host: str = "127.0.0.1", port: int = 8080,
                token: str | None = None) -> AsyncIterator[str]:
    """Serve `router` on host:port in the running event loop (table writes need `token`); yields its base URL;
    stops on exit."""
    try:
        async with serve_app(create_app(router, token), host, port, on_request=accept_arrivals(router)) as url:
            yield url
    finally:
        await router.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlserver_ipa.router", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="the model name the pipeline is served as")
    parser.add_argument("--stages", required=True, help="stage names in order, comma-separated")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="serve V2 gRPC on this port too (default: REST only)")
    parser.add_argument("--in-flight-per-batch", type=int, default=DispatchSettings.in_flight_per_batch,
                        help="requests in flight per replica, in batches of its batch size (default %(default)s)")
    parser.add_argument("--queue-per-slot", type=int, default=DispatchSettings.queue_per_slot,
                        help="requests that may wait at the router per in-flight slot (default %(default)s)")
    parser.add_argument("--reply-reserve-ms", type=float, default=DispatchSettings.reply_reserve_ms,
                        help="kept of every deadline for the answer's way back to the client (default %(default)s)")
    parser.add_argument("--require-upstreams", action="store_true",
                        help="refuse every route naming a replica until the replicas started are sent "
                             "(PUT /router/upstreams); without it, any loopback port passes until then")
    parser.add_argument("--budget-window-s", type=float, default=30.0,
                        help="window of the arrival budgets exported for the adapter's cl_max (default %(default)s)")
    args = parser.parse_args(argv)
    import uvicorn

    try:
        token, limits = load_token(), RequestLimits.from_env()
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    if not 0 <= args.reply_reserve_ms <= 60_000:
        parser.exit(2, f"{parser.prog}: --reply-reserve-ms must be between 0 and 60000, got {args.reply_reserve_ms:g}\n")
    dispatch = DispatchSettings(in_flight_per_batch=args.in_flight_per_batch, queue_per_slot=args.queue_per_slot,
                                reply_reserve_ms=args.reply_reserve_ms)
    router = PipelineRouter(args.pipeline, [s for s in args.stages.split(",") if s], dispatch=dispatch,
                            budget_window_s=args.budget_window_s, upstreams=Upstreams(required=args.require_upstreams))
    GcPauses(router.registry)  # the router's only registry: made once per process
    # Its own process, its own event loop (uvloop); the connection protocol is the one with the request limits.
    config = uvicorn.Config(create_app(router, token), host=args.host, port=args.port, log_level="warning",
                            loop="none", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                            **uvicorn_options(limits, lambda a: LimitsMiddleware(a, limits),
                                             on_request=accept_arrivals(router)))

    async def run() -> None:
        trim = asyncio.create_task(return_freed_memory())
        grpc_server = None
        if args.grpc_port is not None:
            grpc_server = await start_grpc(router, args.host, args.grpc_port, limits)
        freeze_startup_heap()  # all imported and built: full collections walk only what requests made (`heap`)
        try:
            await uvicorn.Server(config).serve()
        finally:
            trim.cancel()
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)
            await router.aclose()

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
