"""The adapter's REST API: read what it decided, change what it optimises, force a decision. OpenAPI at /docs.

    GET  /status                 pipeline, controls in use, interval, decisions so far, the latest one in brief
    GET  /decision               the latest decision record (what is in force and why)
    GET  /decisions?limit=N      the decision history, oldest first
    GET  /objective              {"alpha", "beta", "delta"}            PUT: change any of them
    GET  /slo                    {"slo_ms"}                            PUT: change it
    GET  /policy                 {"policy", "known"}                   PUT: {"policy": name}
    GET  /predictor              {"predictor", "known"}                PUT: {"predictor": name}
    POST /decide                 decide now (and apply); answers with the new record
    GET  /metrics                the adapter's own Prometheus metrics
    GET  /healthz                200 while the process serves

Changes take effect at the next decision (the next interval, or a POST /decide). Reads are open; PUT and POST
need the pipeline's token as `Authorization: Bearer <token>` (401 without it or with another token; the same
check as the data plane's, `mlserver_ipa.auth`). Weights are bounded to [0, 1e6] and the SLO to (0, 1 h], so
every record stays finite; answers are rendered with orjson, which writes a non-finite number as null rather
than failing. Every 4xx has one JSON shape, documented per route in the OpenAPI:

    {"error": "what is wrong", "status": 422, "field": "alpha"}     (`field` null when no field is at fault)

pydantic's validation errors (422) name the field; a value the adapter refuses (an unknown policy) too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from adapter.control.service import AdapterService, ControlError, Controls, DecisionRecord
from adapter.decision.policies import POLICIES
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.spec import MAX_SLO_MS, MAX_WEIGHT
from mlserver_ipa.auth import TokenError, check, new_token


@dataclass(frozen=True)
class ApiSettings:
    """How the API is served."""

    token: str | None
    """the pipeline's token, which writes need (`ipa up` makes it; None refuses every write)"""
    title: str = "IPA adapter"


__all__ = ["ApiSettings", "create_app", "new_token"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT)]


class ObjectiveChange(_Body):
    """Any of the weights of `alpha·accuracy − beta·cores − delta·batch`; the others stay as they are."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    # None (the default) only when the field is left out: an explicit null is refused, as the schema says.
    alpha: Weight = Field(None, description="weight of pipeline accuracy (a fraction 0..1)")  # type: ignore[assignment]
    beta: Weight = Field(None, description="cost of one core")  # type: ignore[assignment]
    delta: Weight = Field(None, description="cost of one unit of batch size")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _something(self) -> ObjectiveChange:
        if self.alpha is None and self.beta is None and self.delta is None:
            raise ValueError("give at least one of alpha, beta, delta")
        return self


class SloChange(_Body):
    slo_ms: float = Field(gt=0, le=MAX_SLO_MS, description="end-to-end p99 latency objective, ms")


class PolicyChange(_Body):
    policy: str = Field(description=f"one of {', '.join(POLICIES)}", json_schema_extra={"enum": list(POLICIES)})


class PredictorChange(_Body):
    predictor: str = Field(description="reactive, ewma or lstm (oracle needs the future: simulations only)",
                           json_schema_extra={"enum": [n for n in PREDICTOR_NAMES if n != "oracle"]})


class Objective(BaseModel):
    alpha: float
    beta: float
    delta: float


class Slo(BaseModel):
    slo_ms: float


class PolicyChoice(BaseModel):
    policy: str
    known: list[str]


class PredictorChoice(BaseModel):
    predictor: str
    known: list[str]


class Status(BaseModel):
    pipeline: str
    controls: Controls
    interval_s: float
    uptime_s: float
    decisions: int
    latest: dict[str, Any] | None = Field(None, description="the latest decision in brief (GET /decision: all)")


class ApiError(BaseModel):
    """The one error shape of this API."""

    error: str
    status: int
    field: str | None = None


READ_ERRORS: dict[int | str, dict[str, Any]] = {422: {"model": ApiError, "description": "a bad query"}}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ApiError, "description": "no token, or another one"},
    403: {"model": ApiError, "description": "the adapter was started without a token: writes are off"},
    422: {"model": ApiError, "description": "a body that does not validate, or a value the adapter refuses"},
}


def error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of this API."""
    return JSONResponse({"error": message, "status": status, "field": field}, status_code=status, headers=headers)


def _field(loc: Iterable[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


class _AdapterCollector(Collector):
    def __init__(self, service: AdapterService) -> None:
        self.service = service

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self.service
        pipeline = s.spec.name
        outcomes = CounterMetricFamily("ipa_adapter_decisions", "Decisions by outcome", labels=["pipeline", "outcome"])
        for outcome, n in sorted(s.outcomes.items()):
            outcomes.add_metric([pipeline, outcome], n)
        yield outcomes
        replaced: dict[str, int] | None = getattr(s.executor, "replaced", None)  # the local cluster's
        if replaced is not None:
            family = CounterMetricFamily("ipa_adapter_replicas_replaced", "Replicas replaced since start, by why "
                                         "(exited: the process ended; unresponsive: health or metrics did not "
                                         "answer)", labels=["pipeline", "reason"])
            for reason, n in sorted(replaced.items()):
                family.add_metric([pipeline, reason], n)
            yield family
        latest = s.current()
        if latest is None:
            return
        gauges = {
            "ipa_adapter_predicted_load_rps": ("Load the latest decision provisions for", latest.predicted_load_rps),
            "ipa_adapter_observed_load_rps": ("Load observed before the latest decision",
                                              latest.observed.load_rps if latest.observed else None),
            "ipa_adapter_decided_cores": ("Cores of the decision in force", latest.decision.cores),
            "ipa_adapter_objective": ("Objective value of the decision in force", latest.decision.objective.value),
            "ipa_adapter_metrics_available": ("1 when the latest observation could be read",
                                              None if latest.observed is None else float(latest.observed.available)),
        }
        for name, (doc, value) in gauges.items():
            if value is not None:
                g = GaugeMetricFamily(name, doc, labels=["pipeline"])
                g.add_metric([pipeline], value)
                yield g


def create_app(settings: ApiSettings, core: AdapterService) -> FastAPI:
    """The API over `core` (see module doc)."""
    app = FastAPI(title=settings.title, description=(__doc__ or "").split("\n\n")[0],
                  default_response_class=ORJSONResponse)
    bearer = HTTPBearer(auto_error=False, description="the pipeline's token (`ipa up` writes it in its home)")
    registry = CollectorRegistry()
    registry.register(_AdapterCollector(core))

    def writer(request: Request, _: object = Depends(bearer)) -> None:  # `bearer` documents the scheme
        try:
            check(request.headers.get("authorization"), settings.token)
        except TokenError as e:
            raise HTTPException(e.status, str(e)) from None

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return error(422, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        field = _field(first.get("loc", ()))
        message = "; ".join(f"{_field(x.get('loc', ())) or 'body'}: {x['msg']}" for x in e.errors())
        return error(422, message, field)

    @app.exception_handler(ControlError)
    async def _refused(_: Request, e: ControlError) -> JSONResponse:
        return error(e.status, str(e), e.field)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else None
        return error(e.status_code, str(e.detail), None, headers)

    @app.get("/status")
    async def status() -> Status:
        latest = core.current()
        brief = None
        if latest is not None:
            brief = {"index": latest.index, "trigger": latest.trigger, "outcome": latest.outcome,
                     "reason": latest.reason, "status": latest.decision.status, "cores": latest.decision.cores,
                     "predicted_load_rps": latest.predicted_load_rps,
                     "stages": {s.name: [g.model_dump() for g in s.replicas] for s in latest.decision.stages}}
        return Status(pipeline=core.spec.name, controls=core.controls(), interval_s=core.settings.interval_s,
                      uptime_s=core.clock() - core.started_at, decisions=len(core.history), latest=brief)

    @app.get("/decision", responses={404: {"model": ApiError, "description": "no decision yet"}})
    async def decision() -> DecisionRecord:
        latest = core.current()
        if latest is None:
            raise HTTPException(404, "no decision yet")
        return latest

    @app.get("/decisions", responses=READ_ERRORS)
    async def decisions(limit: int | None = Query(None, ge=1, description="only the latest N")) -> list[DecisionRecord]:
        return core.records(limit)

    def _objective(c: Controls) -> Objective:
        return Objective(alpha=c.alpha, beta=c.beta, delta=c.delta)

    @app.get("/objective")
    async def get_objective() -> Objective:
        return _objective(core.controls())

    @app.put("/objective", dependencies=[Depends(writer)], responses=WRITE_ERRORS)
    async def put_objective(change: ObjectiveChange) -> Objective:
        return _objective(core.set_objective(change.alpha, change.beta, change.delta))

    @app.get("/slo")
    async def get_slo() -> Slo:
        return Slo(slo_ms=core.controls().slo_ms)

    @app.put("/slo", dependencies=[Depends(writer)], responses=WRITE_ERRORS)
    async def put_slo(change: SloChange) -> Slo:
        return Slo(slo_ms=core.set_slo(change.slo_ms).slo_ms)

    @app.get("/policy")
    async def get_policy() -> PolicyChoice:
        return PolicyChoice(policy=core.controls().policy, known=list(POLICIES))

    @app.put("/policy", dependencies=[Depends(writer)], responses=WRITE_ERRORS)
    async def put_policy(change: PolicyChange) -> PolicyChoice:
        return PolicyChoice(policy=core.set_policy(change.policy).policy, known=list(POLICIES))

    @app.get("/predictor")
    async def get_predictor() -> PredictorChoice:
        return PredictorChoice(predictor=core.controls().predictor, known=list(PREDICTOR_NAMES))

    @app.put("/predictor", dependencies=[Depends(writer)], responses=WRITE_ERRORS)
    async def put_predictor(change: PredictorChange) -> PredictorChoice:
        return PredictorChoice(predictor=core.set_predictor(change.predictor).predictor, known=list(PREDICTOR_NAMES))

    @app.post("/decide", dependencies=[Depends(writer)], responses=WRITE_ERRORS)
    async def decide() -> DecisionRecord:
        return await core.decide("forced")

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}})
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
