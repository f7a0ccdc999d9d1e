"""`VariantRuntime`: the MLServer runtime that serves one stage replica from a family of variants: ONNX files
(onnxruntime) or Hugging Face checkpoint folders of text and speech models (PyTorch, `transformers_session`).

What it adds to a plain onnxruntime runtime:

- per-request SLOs: an absolute deadline (header `ipa-deadline` or parameter `deadline_at_ms`, epoch ms; see
  `deadlines`), else `parameters.deadline_ms` (budget left, ms) counted from the arrival stamp of the HTTP
  layer (`admission`; from the `predict` call when served by a plain `mlserver start`), and
  `parameters.priority` (lower is more urgent). A request whose deadline is gone or cannot be met is answered
  504 before its tensors are decoded, and with `on_late: drop` nothing is answered 200 after its deadline. The
  response `parameters` echo `deadline_ms` (what is left), `deadline_at_ms`, `priority`, and say what served
  it: `variant`, `batch_size` (rows in the onnxruntime call), `batch_id` (shared by requests served together),
  `queue_ms` and `service_ms`;
- its own deadline-aware queue and batcher (`queueing`, `batching`) in place of MLServer's FIFO batcher,
  so keep `max_batch_size` unset in `model-settings.json`;
- in-place control at `/v2/models/<model>/control` (GET: state; POST: a `ControlRequest`): switch variant,
  threads, batch size, batch window, queue limit and late policy; sessions are swapped atomically (`session`);
- Prometheus metrics on MLServer's metrics endpoint (`metrics`);
- text stages take and answer V2 `BYTES` tensors (`text`), speech stages FP32 waveforms at 16 kHz (`audio`);
  a request's string parameters are echoed in the response, so a pipeline carries them to later stages (a QA
  stage's `question`; Seldon's executor forwards response parameters), and a text input the request lacks is
  taken from the parameter of its name.

MLServer re-imports this module each time it reads a model's `implementation`, so nothing lives at module level
here except the class; state, metrics and errors live in the modules it imports.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import Request
from mlserver import MLModel
from mlserver.handlers.custom import CustomHandler, register_custom_handler
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters
from pydantic import ValidationError

from mlserver_ipa.admission import ADMISSION
from mlserver_ipa.auth import TokenError, check, load_token
from mlserver_ipa.batching import Batcher, BatchPolicy, Refusal, Rejection, ServiceTimes
from mlserver_ipa.deadlines import (
    ARRIVAL_HEADER,
    DEADLINE_HEADER,
    BadDeadline,
    Clocks,
    header,
    parse_epoch_ms,
)
from mlserver_ipa.errors import (
    DeadlineUnmeetable,
    ExecutionFailed,
    InvalidControl,
    InvalidInput,
    Overloaded,
    Unauthorized,
    WritesDisabled,
)
from mlserver_ipa.metrics import ModelMetrics
from mlserver_ipa.queueing import DeadlineQueue, Entry
from mlserver_ipa.request_parameters import parse_control, parse_slo, string_parameters
from mlserver_ipa.session import QUICK_WARMUP_S, Session, SessionHolder
from mlserver_ipa.settings import (
    THREADS_PER_CORE,
    ControlRequest,
    ControlState,
    RequestSLO,
    RuntimeSettings,
    VariantInfo,
    describe_validation_error,
    machine_threads,
)
from mlserver_ipa.tensors import came_raw, decode_inputs, encode_outputs, requested_outputs


@dataclass(frozen=True)
class Served:
    outputs: dict[str, np.ndarray]
    variant: str
    batch_rows: int
    batch_id: int
    dispatched: float
    service: float
    done: float


@dataclass(eq=False)
class Pending:
    """A request waiting in the queue: its decoded inputs and the future its answer goes to."""

    feeds: dict[str, np.ndarray]
    outputs: list[str]
    rows: int
    arrival: float
    deadline_ms: float | None
    priority: int
    future: asyncio.Future[Served] = field(repr=False)


class VariantRuntime(MLModel):
    """Serves the active variant of a family through a deadline-aware batcher; switches in place."""

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        extra = (settings.parameters.extra if settings.parameters else None) or {}
        try:
            self.config = RuntimeSettings.model_validate(extra)
        except ValidationError as e:
            raise ValueError(f"model {settings.name}: parameters.extra: {describe_validation_error(e)}") from e
        if self.config.threads > machine_threads():
            raise ValueError(f"model {settings.name}: parameters.extra: threads {self.config.threads} is more than "
                             f"this machine takes ({machine_threads()})")
        source = getattr(settings, "_source", None)
        self._folder = Path(source).parent if source else Path.cwd()
        self._clock = time.monotonic
        self._clocks = Clocks(self._clock, time.time)
        self._sessions = SessionHolder()
        self._times = ServiceTimes(self.config.ewma_alpha, deviations=self.config.service_time_deviations)
        self._queue: DeadlineQueue[Pending] = DeadlineQueue(self.config.queue_limit, self._clock)
        self._batcher = Batcher(
            self._queue,
            self._policy(self.config),
            clock=self._clock,
            service_time=self._service_time,
            execute=self._execute,
            reject=self._reject,
        )
        self._metrics = ModelMetrics(self.name, [v.name for v in self.config.variants])
        self._worker: asyncio.Task[None] | None = None
        self._executing: list[Entry[Pending]] = []
        self._batch_ids = itertools.count(1)
        self._control_lock = asyncio.Lock()
        self._switches = 0
        self._last_switch_ms: float | None = None
        self._signature: tuple | None = None
        self._token = load_token()  # control changes need it (`mlserver_ipa.auth`); None refuses them

        # The control endpoint: MLServer mounts callables carrying a CustomHandler at exactly their rest_path,
        # and the path has to name this model, so the handlers are made per instance.
        path = f"/v2/models/{self.name}/control"

        async def control_state() -> dict:
            return self.state().model_dump(exclude_none=True)

        async def control_apply(request: Request) -> dict:
            try:
                check(request.headers.get("authorization"), self._token)
            except TokenError as e:
                raise (Unauthorized if e.status == 401 else WritesDisabled)(str(e)) from None
            return (await self.apply(parse_control(await request.body()))).model_dump(exclude_none=True)

        register_custom_handler(CustomHandler(rest_path=path, rest_method="GET"), control_state)
        register_custom_handler(CustomHandler(rest_path=path, rest_method="POST"), control_apply)
        self.control_state, self.control_apply = control_state, control_apply

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def load(self) -> bool:
        active = self.config.active
        assert active is not None
        session = await self._build(active, self.config.threads, self.config.batch_size)
        self._signature = session.signature()
        self._describe(session)
        self._metrics.configured(active, self.config.threads, self.config.batch_size)
        self._worker = asyncio.create_task(self._batcher.run(), name=f"batcher-{self.name}")
        ADMISSION.register(self.name, self._admit)
        return True

    async def unload(self, drain_s: float = 10.0) -> bool:
        """Serve what is queued (for at most `drain_s`), then stop; what is left is answered 503."""
        ADMISSION.unregister(self.name, self._admit)
        until = self._clock() + drain_s
        while (self._queue or self._executing) and self._clock() < until:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        left = [e.item for e in self._queue.remove_if(lambda e: True)] + [e.item for e in self._executing]
        for p in left:
            if not p.future.done():
                p.future.set_exception(Overloaded(f"model {self.name} is unloading; retry on another replica"))
        self._metrics.queue(0)
        self._sessions.release()
        return True

    # -- inference ---------------------------------------------------------------------------------------

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        now = self._clock()
        if payload.id is not None and len(payload.id) > self.config.max_request_id_chars:
            raise InvalidInput(f"id has {len(payload.id)} characters; at most {self.config.max_request_id_chars}")
        slo = parse_slo(payload.parameters)
        passed = string_parameters(payload.parameters)
        headers = payload.parameters.headers if payload.parameters else None
        arrival = self._arrival(headers, now)
        deadline = self._deadline(slo, headers, arrival)
        budget_ms = None if math.isinf(deadline) else (deadline - arrival) * 1000
        priority = slo.priority if slo.priority is not None else self.config.default_priority
        refused = self._batcher.refuses(deadline=deadline)  # before any tensor is decoded
        if refused is not None:
            self._metrics.dropped(self._sessions.active.variant, "deadline")
            raise self._unmeetable(refused, deadline, budget_ms, rows=1)
        session = self._sessions.active
        feeds, rows = decode_inputs(
            payload.inputs, session.inputs, self.config.max_request_rows, self.config.chain_input, passed
        )
        session.check(feeds)
        outputs = requested_outputs(payload.outputs, session.outputs)
        pending = Pending(feeds, outputs, rows, arrival, budget_ms, priority,
                          asyncio.get_running_loop().create_future())
        self._batcher.submit(pending, deadline=deadline, priority=priority, rows=rows)
        self._metrics.queue(len(self._queue))
        served = await pending.future
        # Judged when the answer is built, not when the batch finished: under load the event loop may resume
        # this request well after its batch, and what is echoed as left must be what is really left.
        now = max(served.done, self._clock())
        if now > deadline and self.config.on_late == "drop":
            raise DeadlineUnmeetable(f"answered {(now - deadline) * 1000:.1f} ms after its deadline; not "
                                     "answered (on_late: drop)")
        params: dict[str, object] = {
            **passed,
            "priority": priority,
            "variant": served.variant,
            "batch_size": served.batch_rows,
            "batch_id": served.batch_id,
            "queue_ms": round((served.dispatched - arrival) * 1000, 3),
            "service_ms": round(served.service * 1000, 3),
        }
        if budget_ms is not None:
            params["deadline_ms"] = round((deadline - now) * 1000, 3)
            params["deadline_at_ms"] = round(self._clocks.to_epoch_ms(deadline), 3)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            parameters=Parameters(**params),
            outputs=encode_outputs(served.outputs, outputs, raw=came_raw(payload.inputs)),
        )

    def _arrival(self, headers: dict | None, now: float) -> float:
        """When the request arrived: the HTTP layer's stamp when there is one (never later than now)."""
        try:
            stamped = parse_epoch_ms(header(headers, ARRIVAL_HEADER), f"header {ARRIVAL_HEADER}")
        except BadDeadline:
            stamped = None
        return now if stamped is None else min(now, self._clocks.to_monotonic(stamped))

    def _deadline(self, slo: RequestSLO, headers: dict | None, arrival: float) -> float:
        """The request's deadline on this runtime's clock: absolute when given, else relative from arrival."""
        at_ms = slo.deadline_at_ms
        if at_ms is None:
            try:
                at_ms = parse_epoch_ms(header(headers, DEADLINE_HEADER), f"header {DEADLINE_HEADER}")
            except BadDeadline as e:
                raise InvalidInput(str(e)) from e
        if at_ms is not None:
            return self._clocks.to_monotonic(at_ms)
        relative = slo.deadline_ms if slo.deadline_ms is not None else self.config.default_deadline_ms
        return math.inf if relative is None else arrival + relative / 1000

    def _admit(self, deadline_epoch_ms: float) -> str | None:
        """The HTTP layer's question before reading a body: None to admit, else why its deadline cannot be met."""
        deadline = self._clocks.to_monotonic(deadline_epoch_ms)
        refused = self._batcher.refuses(deadline=deadline)
        if refused is None:
            return None
        self._metrics.dropped(self._sessions.active.variant, "deadline")
        return str(self._unmeetable(refused, deadline, None, rows=1))

    def _unmeetable(self, refused: Refusal, deadline: float, budget_ms: float | None, rows: int) -> DeadlineUnmeetable:
        variant = self._sessions.active.variant
        left = (deadline - refused.now) * 1000
        if left <= 0:
            return DeadlineUnmeetable(f"deadline cannot be met: it was gone {-left:.1f} ms before model "
                                      f"{self.name!r} ({variant}) could start it")
        of = "" if budget_ms is None else f" of the {budget_ms:.1f} ms budget"
        return DeadlineUnmeetable(
            f"deadline cannot be met: {left:.1f} ms{of} left, the earliest start is in "
            f"{(refused.start - refused.now) * 1000:.1f} ms and serving {rows} row(s) on {variant} takes "
            f"{refused.service * 1000:.1f} ms"
        )

    def _service_time(self, rows: int) -> float:
        return self._times.estimate(self._sessions.active.config, rows)

    async def _execute(self, batch: list[Entry[Pending]]) -> None:
        live = [e for e in batch if not e.item.future.done()]  # a caller that went away is not served
        self._metrics.queue(len(self._queue))
        if not live:
            return
        session = self._sessions.active  # a swap after this line only affects the next batch
        dispatched = self._clock()
        groups: dict[tuple, list[Entry[Pending]]] = defaultdict(list)
        for e in live:  # e.g. ONNX requests whose dynamic non-batch dimensions differ cannot share one call
            groups[session.batch_key(e.item.feeds)].append(e)
        self._executing = live
        try:
            for group in groups.values():
                await self._run_group(session, group, dispatched)
        finally:
            self._executing = []

    async def _run_group(self, session: Session, group: list[Entry[Pending]], dispatched: float) -> None:
        rows = sum(e.rows for e in group)
        t0 = self._clock()
        try:
            outputs = await session.run_requests([e.item.feeds for e in group])
        except Exception as e:  # the checks in `tensors` should make this unreachable; answer, do not crash
            for entry in group:
                if not entry.item.future.done():
                    entry.item.future.set_exception(ExecutionFailed(f"{session.variant}: inference failed: {e}"))
            return
        done = self._clock()
        service = done - t0
        self._times.observe(session.config, rows, service)
        self._metrics.batch(session.variant, rows, service)
        batch_id = next(self._batch_ids)
        offset = 0
        for entry in group:
            p = entry.item
            sliced = {name: outputs[name][offset:offset + p.rows] for name in p.outputs}
            offset += p.rows
            if p.future.done():
                continue
            p.future.set_result(Served(sliced, session.variant, rows, batch_id, dispatched, service, done))
            self._metrics.served(session.variant, dispatched - p.arrival, done - p.arrival, done > entry.deadline)

    def _reject(self, rejection: Rejection[Pending]) -> None:
        p = rejection.entry.item
        variant = self._sessions.active.variant
        self._metrics.dropped(variant, rejection.reason)
        self._metrics.queue(len(self._queue))
        if p.future.done():
            return
        if rejection.reason == "overloaded":
            error: Exception = Overloaded(
                f"overloaded: {len(self._queue)} requests are queued (queue_limit {self._queue.limit}) and this "
                "one is not more urgent than any of them; retry later or on another replica"
            )
        else:
            refused = Refusal(rejection.now, rejection.start, rejection.service)
            error = self._unmeetable(refused, rejection.entry.deadline, p.deadline_ms, rejection.entry.rows)
        p.future.set_exception(error)

    # -- control -----------------------------------------------------------------------------------------

    def state(self) -> ControlState:
        session = self._sessions.active
        cfg = self.config
        return ControlState(
            model=self.name,
            variant=session.variant,
            variants=[VariantInfo(name=v.name, accuracy=v.accuracy) for v in cfg.variants],
            batch_size=cfg.batch_size,
            max_batch_time_ms=cfg.max_batch_time_ms,
            threads=session.threads,
            queue_limit=cfg.queue_limit,
            on_late=cfg.on_late,
            queue_length=len(self._queue),
            in_flight=self._batcher.in_flight,
            service_time_ms={
                r: round(self._times.estimate(session.config, r) * 1000, 3)
                for r in sorted({1, cfg.batch_size, *self._times.table(session.config)})
            },
            switches=self._switches,
            last_switch_ms=self._last_switch_ms,
        )

    async def apply(self, change: ControlRequest) -> ControlState:
        """Apply a control request; a new session is built and warmed beside the active one before the swap."""
        async with self._control_lock:
            cfg = self.config
            if change.variant is not None and cfg.variant(change.variant) is None:
                known = ", ".join(v.name for v in cfg.variants)
                raise InvalidControl(f"unknown variant {change.variant!r}; model {self.name} has: {known}")
            current = self._sessions.active
            variant = change.variant or current.variant
            threads = change.threads or current.threads
            if threads > machine_threads():
                raise InvalidControl(f"threads: {threads} is more than this machine takes ({machine_threads()}: "
                                     f"{THREADS_PER_CORE} per core)")
            batch_size = change.batch_size or cfg.batch_size
            if (variant, threads) != current.config:
                t0 = self._clock()
                new = await self._build(variant, threads, batch_size)
                self._switches += 1
                self._last_switch_ms = round((self._clock() - t0) * 1000, 3)
                self._metrics.switched()
                self._describe(new)
            elif (batch_size not in self._times.table(current.config)
                  and self._times.estimate(current.config, 1) <= QUICK_WARMUP_S):
                # Measure the new batch size once, beside the serving, so deadlines are judged on a measurement
                # (a slow variant's is extrapolated instead: measuring would starve the serving, `warm_up`).
                self._times.seed(current.config, batch_size, await asyncio.to_thread(current.measure, batch_size))
            updates = {
                "active": variant,
                "threads": threads,
                "batch_size": batch_size,
                **change.model_dump(include={"max_batch_time_ms", "queue_limit", "on_late"}, exclude_none=True),
            }
            self.config = cfg.model_copy(update=updates)
            self._queue.limit = self.config.queue_limit
            self._batcher.policy = self._policy(self.config)
            self._metrics.configured(variant, threads, batch_size)
            return self.state()

    async def _build(self, variant: str, threads: int, batch_size: int) -> Session:
        spec = self.config.variant(variant)
        assert spec is not None
        path = Path(spec.uri) if Path(spec.uri).is_absolute() else self._folder / spec.uri

        def compatible(session: Session) -> None:
            if self._signature is not None and session.signature() != self._signature:
                raise InvalidControl(
                    f"variant {variant} has inputs and outputs {session.signature()}, the model serves "
                    f"{self._signature}; queued requests could not be served by it"
                )

        try:
            session, measured = await self._sessions.switch(
                variant, path, threads, warmup_rows=(1, batch_size), check=compatible, limits=self.config.limits
            )
        except InvalidControl:
            raise
        except Exception as e:
            raise ExecutionFailed(f"variant {variant} could not be loaded from {path}: {e}") from e
        for rows, seconds in measured.items():
            self._times.seed(session.config, rows, seconds)
        return session

    def _describe(self, session: Session) -> None:
        """Model metadata (`GET /v2/models/<model>`) from the active session's signature."""
        self.inputs = [MetadataTensor(name=s.name, datatype=s.datatype, shape=[d or -1 for d in s.shape])
                       for s in session.inputs]
        self.outputs = [MetadataTensor(name=s.name, datatype=s.datatype, shape=[d or -1 for d in s.shape])
                        for s in session.outputs]

    @staticmethod
    def _policy(cfg: RuntimeSettings) -> BatchPolicy:
        return BatchPolicy(cfg.batch_size, cfg.max_batch_time_ms / 1000, cfg.on_late)
