"""Bringing a live SeldonDeployment to a plan: the JSON merge patch the Kubernetes executor sends.

    patch = deployment_patch(live_obj, spec, plan, rollout=False)   # None when nothing is to change

Only what the plan decides changes (replica counts, traffic, the `ipa/plan` annotation; with `rollout` also the
pod template's CPU and runtime settings); everything else in the live object (defaults Seldon's webhook added,
fields users set) is kept. A predictor the plan adds is cloned from the first live one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from adapter.kubernetes.seldon import (
    ANNOTATION_PLAN,
    ENV_EXTRA,
    LABEL_PREDICTOR,
    PredictorPlan,
    RenderOptions,
    ReplicaConfig,
    cpu_quantity,
    parse_cpu,
    plan_to_annotation,
    render_predictor,
)
from adapter.spec import GraphSpec


def _find_container(predictor: Mapping[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The componentSpec and the container named `name` in a live predictor."""
    for cs in predictor.get("componentSpecs") or []:
        for c in (cs.get("spec") or {}).get("containers") or []:
            if c.get("name") == name:
                return cs, c
    return None


def _roll_container(container: dict[str, Any], config: ReplicaConfig) -> None:
    """Put `config` into a live container's template: CPU and the runtime's settings in MLSERVER_MODEL_EXTRA."""
    cpu = cpu_quantity(config.cores)
    resources = container.setdefault("resources", {})
    for kind in ("requests", "limits"):
        if parse_cpu((resources.get(kind) or {}).get("cpu")) != config.cores:
            resources.setdefault(kind, {})["cpu"] = cpu
    for env in container.get("env") or []:
        if env.get("name") == ENV_EXTRA:
            try:
                extra = json.loads(env.get("value") or "{}")
            except ValueError:
                extra = {}
            wanted = {"active": config.variant, "batch_size": config.batch,
                      "max_batch_time_ms": config.max_batch_time_ms, "threads": config.threads}
            if any(extra.get(k) != v for k, v in wanted.items()):
                env["value"] = json.dumps({**extra, **wanted}, separators=(",", ":"))


def updated_predictors(
    live: Sequence[Mapping[str, Any]], spec: GraphSpec, plan: Sequence[PredictorPlan], *, rollout: bool,
    options: RenderOptions | None = None,
) -> list[dict[str, Any]]:
    """The live predictors changed to `plan`: replicas and traffic always; with `rollout`, also the template's
    variant, batch, threads and CPU (which makes Seldon roll the pods). Everything else (defaults the operator
    added, fields users set) is kept. A predictor the plan adds is cloned from the first live one."""
    by_name = {p.get("name"): p for p in live}
    out: list[dict[str, Any]] = []
    for p in plan:
        if p.name in by_name:
            new = copy.deepcopy(dict(by_name[p.name]))
        elif live:
            new = copy.deepcopy(dict(live[0]))
            new["name"] = p.name
            new.setdefault("labels", {})[LABEL_PREDICTOR] = p.name
            new["labels"].pop("version", None)  # the operator defaults it to the predictor's name
            for cs in new.get("componentSpecs") or []:
                cs.setdefault("metadata", {}).setdefault("labels", {})[LABEL_PREDICTOR] = p.name
        else:
            new = render_predictor(spec, p, options or RenderOptions())
        if len(plan) > 1 or "traffic" in new:
            new["traffic"] = p.traffic
        for c in p.components:
            found = _find_container(new, c.stage)
            if found is None:
                continue  # reported by validate_seldon_deployment; nothing to scale
            cs, container = found
            cs["replicas"] = c.replicas
            if rollout or p.name not in by_name:
                _roll_container(container, c.template)
        out.append(new)
    return out


def deployment_patch(
    live: Mapping[str, Any], spec: GraphSpec, plan: Sequence[PredictorPlan], *, rollout: bool,
    options: RenderOptions | None = None,
) -> dict[str, Any] | None:
    """The JSON merge patch bringing `live` to `plan`, or None when it is already there.

    It carries `metadata.resourceVersion`, so a concurrent change makes the API server answer 409 (then read
    again and recompute) instead of being overwritten; `spec.predictors` is sent whole, as merge patches
    replace lists.
    """
    patch: dict[str, Any] = {}
    annotation = plan_to_annotation(plan)
    if ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PLAN) != annotation:
        patch["metadata"] = {"annotations": {ANNOTATION_PLAN: annotation}}
    predictors = list((live.get("spec") or {}).get("predictors") or [])
    new = updated_predictors(predictors, spec, plan, rollout=rollout, options=options)
    if new != predictors:
        patch["spec"] = {"predictors": new}
    if not patch:
        return None
    rv = (live.get("metadata") or {}).get("resourceVersion")
    if rv:
        patch.setdefault("metadata", {})["resourceVersion"] = rv
    return patch
