"""The pipeline as a Seldon Core v1 `SeldonDeployment`: what runs where (the plan), rendered and checked.

    plan = plan_deployment(spec, decision)             # predictors -> stage components -> replica groups
    obj = render_seldon_deployment(spec, plan, RenderOptions(image="ghcr.io/me/ipa-runtime:0.1"))
    problems = validate_seldon_deployment(obj)         # the operator's own rules, beyond the CRD schema

Layout: one predictor whose graph chains the stages as MODEL nodes (each the only child of the one before),
one componentSpec per stage with a container named like its node (the MLServer model name Seldon gives it),
CPU request = limit with `resizePolicy` cpu `NotRequired` so the adapter can resize pods in place; startup,
readiness and liveness probes (`PROBES`) take a replica that stops answering out of traffic and restart it. A single-stage
graph whose decision runs several variants at once (InfAdapter) becomes several predictors whose `traffic`
sums to 100. The runtime reads its configuration (`parameters.extra` of VariantRuntime: variants, active
variant, batch size, batch window, threads) from `MLSERVER_MODEL_EXTRA`, MLServer's own environment form of
model settings, so no model-settings.json is needed in the image.

Transport: Seldon's executor calls the graph's nodes over the graph's `transport` (`spec.transport`: `grpc`, the
default, as the local router does, or `rest`), on each container's port named `grpc` (9500; the operator sets
MLServer's `MLSERVER_GRPC_PORT` to it) or `http` (9000). Over gRPC it chains two nodes by copying each output's
typed `contents` into the next request (v1.18 `KFServingGrpcClient.Chain`) and drops `raw_output_contents`, so
every stage but the last answers typed contents (`$IPA_GRPC_OUTPUTS=typed`, `mlserver_ipa.grpc_server`); the last
one answers raw contents, which the executor passes back to the client as they are.

The desired configuration (the plan) is also written on the object as the annotation `ipa/plan`: the
Kubernetes executor reads it back to bring a recreated pod to it at the next interval. `adapter.kubernetes.patch`
brings a live object to a plan; `adapter.kubernetes.rules` holds the operator's rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapter.decision.model import Decision
from adapter.kubernetes.rules import validate_seldon_deployment
from adapter.spec import GraphSpec, StageSpec
from mlserver_ipa.grpc_server import GRPC_OUTPUTS_ENV
from mlserver_ipa.settings import threads_for
from mlserver_ipa.zoo.transformers_families import TRANSFORMERS_FAMILIES

__all__ = [
    "ANNOTATION_PLAN", "API_VERSION", "ComponentPlan", "GROUP", "LABEL_GRAPH", "LABEL_PREDICTOR", "LABEL_STAGE",
    "PLURAL", "PlanError", "PredictorPlan", "RenderOptions", "ReplicaConfig", "VERSION", "cpu_quantity",
    "parse_cpu", "plan_deployment", "plan_from_annotation", "plan_to_annotation", "render_predictor",
    "render_seldon_deployment", "runtime_settings", "threads_for", "validate_seldon_deployment",
]

GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"
API_VERSION = f"{GROUP}/{VERSION}"
LABEL_GRAPH, LABEL_STAGE, LABEL_PREDICTOR = "ipa/graph", "ipa/stage", "ipa/predictor"
ANNOTATION_PLAN = "ipa/plan"
RUNTIME_IMPLEMENTATION = "mlserver_ipa.runtime.VariantRuntime"
ENV_EXTRA = "MLSERVER_MODEL_EXTRA"
TOKEN_SECRET, TOKEN_SECRET_KEY = "ipa-token", "token"
"""The Secret holding the pipeline's token: `kubectl create secret generic ipa-token --from-literal=token=...`;
the runtime containers and the adapter read it as `$IPA_TOKEN`."""
# Fixed ports: every stage runs in its own pod, so they never clash, and a PodMonitor can name them.
HTTP_PORT, GRPC_PORT, METRICS_PORT = 9000, 9500, 6000
METRICS_PATH = "/prometheus"  # Seldon's default MLSERVER_METRICS_ENDPOINT
PROBES: dict[str, Any] = {
    # A replica that stops answering is taken out of its Service (readiness) and restarted by the kubelet in the
    # same pod, variant and CPU (liveness), as the local cluster does (`executors.local.liveness`); a cold start
    # (a model loading) has up to 5 min before liveness counts.
    "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                     "timeoutSeconds": 5, "failureThreshold": 60},
    "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                       "timeoutSeconds": 5, "failureThreshold": 2},
    "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 5,
                      "timeoutSeconds": 5, "failureThreshold": 3},
}
"""Probes of every runtime container (Kubernetes' defaults otherwise: none)."""
SPLIT_PREDICTORS = ("default",) + tuple(f"split-{i}" for i in range(1, 64))


class PlanError(ValueError):
    """A decision that does not fit the graph; `field` is the path in the decision (`stages[1].replicas[0]`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# -- quantities -------------------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def parse_cpu(value: object) -> float | None:
    """Cores in a Kubernetes quantity (`1500m`, `1.5`, `2`, 2); None if it is not a quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if m is None:
        return None
    number, suffix = float(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * 10.0 ** int(suffix[1:])
    return number * _SUFFIX[suffix]


def cpu_quantity(cores: float) -> str:
    """The canonical Kubernetes form of a CPU amount: `250m`, `1500m`, `2`."""
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"



# -- the plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaConfig:
    """What one replica of a stage runs."""

    variant: str
    batch: int
    cores: float
    max_batch_time_ms: float

    @property
    def threads(self) -> int:
        return threads_for(self.cores)


@dataclass(frozen=True)
class ComponentPlan:
    """One stage inside one predictor: its replica groups, the most numerous first (the pod template's)."""

    stage: str
    groups: tuple[tuple[ReplicaConfig, int], ...]

    @property
    def replicas(self) -> int:
        return sum(n for _, n in self.groups)

    @property
    def template(self) -> ReplicaConfig:
        return self.groups[0][0]


@dataclass(frozen=True)
class PredictorPlan:
    name: str
    traffic: int
    components: tuple[ComponentPlan, ...]  # in stage order

    def component(self, stage: str) -> ComponentPlan | None:
        return next((c for c in self.components if c.stage == stage), None)


def _shares_to_percent(shares: Sequence[float]) -> list[int]:
    """Integer percentages summing to exactly 100, by largest remainder."""
    total = sum(shares)
    weights = [s / total for s in shares] if total > 0 else [1.0 / len(shares)] * len(shares)
    raw = [w * 100 for w in weights]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))
    for i in order[: 100 - sum(out)]:
        out[i] += 1
    return out


def plan_deployment(
    spec: GraphSpec, decision: Decision | None = None, previous: Sequence[PredictorPlan] = ()
) -> list[PredictorPlan]:
    """The predictors for `decision` (the stages' static configurations when None).

    A single-stage decision with several variants in use gets one predictor per variant; `previous` (the plan
    in force) keeps a variant on the predictor that already runs it, so pods keep their variant.
    """
    groups_by_stage: dict[str, list[tuple[ReplicaConfig, int, float]]] = {}
    if decision is None:
        for stage in spec.stages:
            st = stage.static_config()
            groups_by_stage[stage.name] = [
                (ReplicaConfig(st.variant, st.batch, st.cores, stage.max_batch_time_ms), st.replicas, 1.0)]
    else:
        for i, sd in enumerate(decision.stages):
            try:
                stage = spec.stage(sd.name)
            except KeyError:
                raise PlanError(f"stages[{i}].name", f"{sd.name!r} is not a stage of graph {spec.name!r} "
                                f"({', '.join(s.name for s in spec.stages)})") from None
            for j, g in enumerate(sd.replicas):
                if g.variant not in {v.name for v in stage.variants}:
                    raise PlanError(f"stages[{i}].replicas[{j}].variant",
                                    f"{g.variant!r} is not a variant of stage {stage.name!r}")
            used = [(ReplicaConfig(g.variant, g.batch, g.cores, stage.max_batch_time_ms), g.count, g.load_share)
                    for g in sd.replicas if g.count > 0]
            groups_by_stage[stage.name] = used or [
                (ReplicaConfig(g.variant, g.batch, g.cores, stage.max_batch_time_ms), 0, 0.0) for g in sd.replicas[:1]]
        missing = [s.name for s in spec.stages if s.name not in groups_by_stage]
        if missing:
            raise PlanError("stages", f"the decision has no entry for stage(s) {', '.join(missing)}")

    if len(spec.stages) == 1 and len(groups_by_stage[spec.stages[0].name]) > 1:
        return _split_predictors(spec.stages[0], groups_by_stage[spec.stages[0].name], previous)
    components = []
    for stage in spec.stages:
        merged: dict[ReplicaConfig, int] = {}
        for config, count, _ in groups_by_stage[stage.name]:
            merged[config] = merged.get(config, 0) + count
        ordered = sorted(merged.items(), key=lambda kv: -kv[1])
        components.append(ComponentPlan(stage.name, tuple(ordered)))
    return [PredictorPlan("default", 100, tuple(components))]


def _split_predictors(
    stage: StageSpec, groups: list[tuple[ReplicaConfig, int, float]], previous: Sequence[PredictorPlan]
) -> list[PredictorPlan]:
    if len(groups) > len(SPLIT_PREDICTORS):
        raise PlanError("stages[0].replicas", f"at most {len(SPLIT_PREDICTORS)} variants at once")
    ordered = sorted(groups, key=lambda g: -g[2])
    was = {p.name: c.template.variant for p in previous if (c := p.component(stage.name)) is not None}
    names = list(SPLIT_PREDICTORS[: len(ordered)])
    assigned: dict[str, tuple[ReplicaConfig, int, float]] = {}
    for name in names:  # a predictor keeps the variant it runs
        same = next((g for g in ordered if g[0].variant == was.get(name) and g not in assigned.values()), None)
        if same is not None:
            assigned[name] = same
    rest = iter([g for g in ordered if g not in assigned.values()])
    for name in names:
        if name not in assigned:
            assigned[name] = next(rest)
    traffic = _shares_to_percent([assigned[n][2] for n in names])
    return [PredictorPlan(n, t, (ComponentPlan(stage.name, ((assigned[n][0], assigned[n][1]),)),))
            for n, t in zip(names, traffic, strict=True)]


def plan_to_annotation(plan: Sequence[PredictorPlan]) -> str:
    return json.dumps({"predictors": [
        {"name": p.name, "traffic": p.traffic, "stages": [
            {"stage": c.stage, "groups": [
                {"variant": g.variant, "batch": g.batch, "cores": g.cores, "max_batch_time_ms": g.max_batch_time_ms,
                 "count": n} for g, n in c.groups]} for c in p.components]} for p in plan]},
        separators=(",", ":"))


def plan_from_annotation(obj: Mapping[str, Any]) -> list[PredictorPlan] | None:
    """The plan written on a SeldonDeployment by the adapter; None if there is none or it cannot be read."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PLAN)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return [PredictorPlan(p["name"], int(p["traffic"]), tuple(
            ComponentPlan(c["stage"], tuple(
                (ReplicaConfig(g["variant"], int(g["batch"]), float(g["cores"]), float(g["max_batch_time_ms"])),
                 int(g["count"])) for g in c["groups"])) for c in p["stages"])) for p in data["predictors"]]
    except (ValueError, KeyError, TypeError):
        return None


# -- rendering --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """How the SeldonDeployment is rendered beyond what the graph and the decision say."""

    image: str = "ipa-runtime:0.1.0"
    """The runtime image (manifests/Dockerfile.runtime)."""
    namespace: str = "default"
    models_dir: str = "/opt/ipa/models"
    """Where the image keeps the variants: demo families at `<dir>/<family>/<variant>.onnx`, or the folder
    `<dir>/<family>/<variant>/` for the transformers families (what `ipa models build --family F --out <dir>`
    writes), your own ONNX files or checkpoint folders at `<dir>/<stage>/<name>`."""
    memory: str = "2Gi"
    """Memory request = limit of every runtime container (all variants of a stage are loaded at once)."""


def variant_uri(stage: StageSpec, variant: str, models_dir: str) -> str:
    """Where the runtime image finds a variant's ONNX file or checkpoint folder."""
    v = stage.variant(variant)
    root = models_dir.rstrip("/")
    if v.model is None:
        family = stage.family or stage.name
        if family in TRANSFORMERS_FAMILIES:
            return f"{root}/{family}/{v.name}"
        return f"{root}/{family}/{v.name}.onnx"
    if v.model.startswith("/") or "://" in v.model:
        return v.model
    return f"{root}/{stage.name}/{v.model.rsplit('/', 1)[-1]}"


def runtime_settings(stage: StageSpec, config: ReplicaConfig, models_dir: str) -> dict[str, Any]:
    """`parameters.extra` of VariantRuntime for a replica running `config` (mlserver_ipa.settings)."""
    return {
        "variants": [{"name": v.name, "uri": variant_uri(stage, v.name, models_dir), "accuracy": v.accuracy}
                     for v in stage.variants],
        "active": config.variant,
        "batch_size": config.batch,
        "max_batch_time_ms": config.max_batch_time_ms,
        "threads": config.threads,
    }


def _container(stage: StageSpec, config: ReplicaConfig, options: RenderOptions,
               typed_outputs: bool = False) -> dict[str, Any]:
    """`typed_outputs`: the stage feeds another over Seldon's gRPC chain (see module doc)."""
    cpu = cpu_quantity(config.cores)
    extra = json.dumps(runtime_settings(stage, config, options.models_dir), separators=(",", ":"))
    typed = [{"name": GRPC_OUTPUTS_ENV, "value": "typed"}] if typed_outputs else []
    return {
        "name": stage.name,
        "image": options.image,
        "env": [
            {"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": RUNTIME_IMPLEMENTATION},
            {"name": ENV_EXTRA, "value": extra},
            {"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"},
            # the pipeline's token, which control changes need (mlserver_ipa.auth): one Secret per namespace
            {"name": "IPA_TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_SECRET_KEY}}},
            *typed,
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": cpu, "memory": options.memory},
                      "limits": {"cpu": cpu, "memory": options.memory}},
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
        **PROBES,
    }


def _graph(stages: Sequence[StageSpec]) -> dict[str, Any]:
    node: dict[str, Any] = {"name": stages[-1].name, "type": "MODEL", "children": []}
    for stage in reversed(stages[:-1]):
        node = {"name": stage.name, "type": "MODEL", "children": [node]}
    return node


def render_predictor(spec: GraphSpec, p: PredictorPlan, options: RenderOptions) -> dict[str, Any]:
    specs = []
    for c in p.components:
        stage = spec.stage(c.stage)
        specs.append({
            "metadata": {
                "labels": {LABEL_GRAPH: spec.name, LABEL_STAGE: stage.name, LABEL_PREDICTOR: p.name},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                "prometheus.io/path": METRICS_PATH},
            },
            "replicas": c.replicas,
            "spec": {"containers": [_container(stage, c.template, options, typed_outputs=spec.transport == "grpc"
                                               and stage.name != spec.stages[-1].name)]},
        })
    return {"name": p.name, "traffic": p.traffic, "labels": {LABEL_GRAPH: spec.name, LABEL_PREDICTOR: p.name},
            "graph": _graph(spec.stages), "componentSpecs": specs}


def render_seldon_deployment(
    spec: GraphSpec, plan: Sequence[PredictorPlan], options: RenderOptions | None = None
) -> dict[str, Any]:
    """The SeldonDeployment (a plain dict, ready for YAML) running `plan`."""
    options = options or RenderOptions()
    return {
        "apiVersion": API_VERSION,
        "kind": "SeldonDeployment",
        "metadata": {
            "name": spec.name,
            "namespace": options.namespace,
            "labels": {LABEL_GRAPH: spec.name, "app.kubernetes.io/part-of": "ipa"},
            "annotations": {ANNOTATION_PLAN: plan_to_annotation(plan)},
        },
        "spec": {"protocol": "v2", "transport": spec.transport, "predictors": [render_predictor(spec, p, options) for p in plan]},
    }
