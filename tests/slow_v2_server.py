"""A tiny V2 inference server for load-generator tests: answers every request after `--delay` seconds.

    python tests/slow_v2_server.py --port 8123 --delay 0.5 [--status 200]

The answer echoes `parameters.deadline_ms` and `priority`, names the variant `slow`, and counts requests at
`GET /stats` (`{"received": n, "concurrent_max": m, "deadline_headers": k, "lead_ms_max": x}`) so a test can see
what arrived while answers were pending, and how many requests carried an `ipa-deadline` header (with the
largest time it left on arrival, ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app(delay_s: float, status: int) -> Starlette:
    state: dict[str, float] = {"received": 0, "in_flight": 0, "concurrent_max": 0, "deadline_headers": 0,
                               "lead_ms_max": float("-inf")}

    async def infer(request: Request) -> JSONResponse:
        at = request.headers.get("ipa-deadline")
        if at is not None:
            state["deadline_headers"] += 1
            state["lead_ms_max"] = max(state["lead_ms_max"], float(at) - time.time() * 1000)
        body = json.loads(await request.body())
        state["received"] += 1
        state["in_flight"] += 1
        state["concurrent_max"] = max(state["concurrent_max"], state["in_flight"])
        try:
            await asyncio.sleep(delay_s)
        finally:
            state["in_flight"] -= 1
        if status != 200:  # the pipeline's one error shape
            return JSONResponse({"error": f"answered {status} as asked"}, status_code=status)
        params = {k: v for k, v in (body.get("parameters") or {}).items() if k in ("deadline_ms", "priority")}
        shape = body["inputs"][0]["shape"]
        return JSONResponse(
            {
                "model_name": request.path_params["model"],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 2], "data": [0.5, float(shape[-1])]}],
                "parameters": {**params, "variant": "slow"},
            },
            status_code=status,
        )

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({k: (None if v == float("-inf") else v) for k, v in state.items()})

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]), Route("/stats", stats)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    uvicorn.run(create_app(args.delay, args.status), host="127.0.0.1", port=args.port, log_level="warning")
