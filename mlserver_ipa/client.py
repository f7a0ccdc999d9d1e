"""A small async V2 (KServe/Open Inference Protocol) REST client, for the router, the profiler, the load
generator and the demo.

    client = V2Client("http://127.0.0.1:8080")
    result = await client.infer("resnet", images, deadline_ms=200, priority=0)
    result.ok, result.status, result.outputs["output"], result.parameters["variant"], result.error
    await client.control("resnet", variant="resnet50", threads=2)

An inference answer of any HTTP status is a result, not an exception: `InferResult.status` and `.error` say
what happened (the load generator counts them). Errors:

    V2TransportError   no answer at all (connection refused or reset, timeout); wraps httpx's error
    V2Error            a non-inference call (metadata, index) answered with an error status
    └── ControlError   the control endpoint refused a change
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from mlserver_ipa.auth import bearer, load_token

try:
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(raw: bytes) -> Any:
        return orjson.loads(raw)
except ImportError:  # pragma: no cover - orjson comes with MLServer
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    def _loads(raw: bytes) -> Any:
        return json.loads(raw)


_NUMPY_TO_V2 = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
_V2_TO_NUMPY = {v: np.dtype(k) for k, v in _NUMPY_TO_V2.items()}


class V2TransportError(Exception):
    """No answer from the server (connection refused or reset, timeout)."""


class V2Error(Exception):
    """The server answered a non-inference call with an error; `status` and its reason are kept."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class ControlError(V2Error):
    """The control endpoint refused a change (unknown variant, batch 0, ...)."""


def _reason(response: httpx.Response) -> str:
    try:
        return str(_loads(response.content).get("error"))
    except (ValueError, AttributeError):
        return response.text


def datatype(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (strings and bytes are BYTES)."""
    if array.dtype.kind in "USO":
        return "BYTES"
    try:
        return _NUMPY_TO_V2[array.dtype.name]
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}") from None


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    kind = datatype(array)
    if kind == "BYTES":
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel().tolist()]
    else:
        data = array.ravel().tolist()
    return {"name": name, "shape": list(array.shape), "datatype": kind, "data": data}


def decode_tensor(tensor: Mapping[str, Any]) -> np.ndarray:
    shape = tensor.get("shape", [])
    kind = tensor.get("datatype", "FP32")
    if kind == "BYTES":
        return np.array(tensor.get("data", []), dtype=object).reshape(shape)
    return np.asarray(tensor.get("data", []), dtype=_V2_TO_NUMPY[kind]).reshape(shape)


@dataclass
class InferResult:
    """The answer to one inference request."""

    status: int
    """HTTP status."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    """Response parameters; from this project's runtime: deadline_ms (left), priority, variant, batch_size,
    batch_id, queue_ms, service_ms."""
    error: str | None = None
    """The server's error text when status is not 2xx."""
    elapsed_ms: float = math.nan
    """Round trip as seen by the client."""
    model_name: str | None = None
    id: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def output(self, name: str | None = None) -> np.ndarray:
        """An output by name, or the only one."""
        if name is None:
            if len(self.outputs) != 1:
                raise KeyError(f"the response has {len(self.outputs)} outputs; name one of {list(self.outputs)}")
            return next(iter(self.outputs.values()))
        return self.outputs[name]


class V2Client:
    """Async V2 REST client on one httpx connection pool; use as `async with V2Client(url) as client`."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, max_connections: int = 256,
                 token: str | None = None) -> None:
        """`token`: the pipeline's token, sent with writes only (control changes, model load/unload); None
        takes it from `$IPA_TOKEN_FILE` / `$IPA_TOKEN` when they are set (`mlserver_ipa.auth`)."""
        self.base_url = base_url.rstrip("/")
        if token is None:
            with contextlib.suppress(ValueError):  # an unreadable file: writes are answered 401, which says so
                token = load_token()
        self._writes = {"content-type": "application/json", **bearer(token)}
        # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive closes them from its side:
        # reusing a connection the server is closing at that moment fails with a ReadError.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=2.0)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> V2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def encode_request(
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        deadline_ms: float | None = None,
        priority: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        input_name: str = "input",
        request_id: str | None = None,
    ) -> bytes:
        """The JSON body of a V2 inference request (encode once, send many times with `infer_raw`)."""
        named = {input_name: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        body: dict[str, Any] = {"inputs": [encode_tensor(n, a) for n, a in named.items()]}
        params = dict(parameters or {})
        if deadline_ms is not None:
            params["deadline_ms"] = deadline_ms
        if priority is not None:
            params["priority"] = priority
        if params:
            body["parameters"] = params
        if outputs:
            body["outputs"] = [{"name": n} for n in outputs]
        if request_id is not None:
            body["id"] = request_id
        return _dumps(body)

    @staticmethod
    def infer_path(model: str, version: str | None = None) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"

    async def infer(
        self,
        model: str,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        deadline_ms: float | None = None,
        priority: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        input_name: str = "input",
        version: str | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Send one inference request. `inputs` is one array (named `input_name`) or a name -> array map."""
        body = self.encode_request(inputs, deadline_ms=deadline_ms, priority=priority, parameters=parameters,
                                   outputs=outputs, input_name=input_name, request_id=request_id)
        return await self.infer_raw(self.infer_path(model, version), body)

    async def infer_raw(self, path: str, body: bytes) -> InferResult:
        """POST an already encoded V2 body to `path` (for replaying or forwarding requests)."""
        try:
            response = await self._http.post(path, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            raise V2TransportError(f"POST {self.base_url}{path}: {type(e).__name__}: {e}") from e
        elapsed = response.elapsed.total_seconds() * 1000
        try:
            payload = _loads(response.content)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return InferResult(response.status_code, error=response.text or None, elapsed_ms=elapsed)
        if response.is_success:
            return InferResult(
                response.status_code,
                outputs={t["name"]: decode_tensor(t) for t in payload.get("outputs", [])},
                parameters=dict(payload.get("parameters") or {}),
                elapsed_ms=elapsed,
                model_name=payload.get("model_name"),
                id=payload.get("id"),
            )
        error = payload.get("error") or payload.get("detail") or response.text
        return InferResult(response.status_code, error=str(error), elapsed_ms=elapsed)

    async def control(self, model: str, **changes: Any) -> dict[str, Any]:
        """Apply changes (variant, batch_size, max_batch_time_ms, threads, queue_limit, on_late); return the
        new state. Without changes, return the current state."""
        path = f"/v2/models/{model}/control"
        try:
            if changes:
                response = await self._http.post(path, content=_dumps(changes), headers=self._writes)
            else:
                response = await self._http.get(path)
        except httpx.HTTPError as e:
            raise V2TransportError(f"{self.base_url}{path}: {type(e).__name__}: {e}") from e
        if not response.is_success:
            raise ControlError(response.status_code, _reason(response))
        return dict(_loads(response.content))

    async def ready(self, model: str | None = None) -> bool:
        """Server ready (all models), or one model ready; False when the server does not answer."""
        path = "/v2/health/ready" if model is None else f"/v2/models/{model}/ready"
        try:
            response = await self._http.get(path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def live(self) -> bool:
        try:
            return (await self._http.get("/v2/health/live")).status_code == 200
        except httpx.HTTPError:
            return False

    async def metadata(self, model: str) -> dict[str, Any]:
        try:
            response = await self._http.get(f"/v2/models/{model}")
        except httpx.HTTPError as e:
            raise V2TransportError(f"GET {self.base_url}/v2/models/{model}: {e}") from e
        if not response.is_success:
            raise V2Error(response.status_code, _reason(response))
        return dict(_loads(response.content))

    async def load(self, model: str) -> None:
        """Load (or reload) a model through the repository API."""
        await self._repository(f"/v2/repository/models/{model}/load")

    async def unload(self, model: str) -> None:
        """Unload a model through the repository API (this runtime serves what is queued first)."""
        await self._repository(f"/v2/repository/models/{model}/unload")

    async def _repository(self, path: str) -> None:
        try:
            response = await self._http.post(path, content=b"{}", headers=self._writes)
        except httpx.HTTPError as e:
            raise V2TransportError(f"POST {self.base_url}{path}: {e}") from e
        if not response.is_success:
            raise V2Error(response.status_code, _reason(response))

    async def models(self) -> list[dict[str, Any]]:
        """The model repository index: [{name, version, state, reason}]."""
        try:
            response = await self._http.post("/v2/repository/index", content=b"{}",
                                              headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            raise V2TransportError(f"POST {self.base_url}/v2/repository/index: {e}") from e
        if not response.is_success:
            raise V2Error(response.status_code, _reason(response))
        return list(_loads(response.content))
