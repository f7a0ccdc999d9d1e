"""The rules Seldon Core's operator enforces on a SeldonDeployment that its CRD schema does not express.

The API server checks an object against the CRD's openAPIV3Schema (`adapter.kubernetes.schema`); Seldon's validating
webhook (`ValidateSeldonDeployment` in operator/apis/machinelearning.seldon.io/v1/seldondeployment_webhook.go,
v1.17) then rejects what the schema lets through: a graph node without its container, duplicate predictor
names, traffic that does not sum to 100, unknown protocols. `validate_seldon_deployment` applies those rules,
plus the Kubernetes ones the operator relies on when it turns componentSpecs into Deployments (container
names, CPU quantities, replica counts), and names the field of every problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
PROTOCOLS = ("seldon", "tensorflow", "kfserving", "v2")
TRANSPORTS = ("rest", "grpc")
SERVER_TYPES = ("rpc", "kafka")
UNKNOWN_IMPLEMENTATION = "UNKNOWN_IMPLEMENTATION"


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _containers(predictor: Mapping[str, Any]) -> dict[str, str]:
    """Container name -> its field path, over all componentSpecs of a predictor."""
    out: dict[str, str] = {}
    for j, cs in enumerate(_list(predictor.get("componentSpecs"))):
        for k, c in enumerate(_list(_map(_map(cs).get("spec")).get("containers"))):
            name = _map(c).get("name")
            if isinstance(name, str):
                out.setdefault(name, f"componentSpecs[{j}].spec.containers[{k}]")
    return out


def _check_node(node: object, path: str, containers: Mapping[str, str], where: str, seen: dict[str, str],
                problems: list[str]) -> None:
    if not isinstance(node, Mapping):
        problems.append(f"{path}: a graph node must be a mapping")
        return
    name = node.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{path}.name: a graph node needs a name")
    else:
        if name in seen:
            problems.append(f"{path}.name: {name!r} is also the name of {seen[name]}; "
                            "Seldon would run both nodes in one container")
        seen[name] = path
        implementation = node.get("implementation")
        if implementation in (None, UNKNOWN_IMPLEMENTATION) and name not in containers:
            problems.append(f"{path}: no container named {name!r} in {where}.componentSpecs[*].spec.containers "
                            "(Seldon: Can't find container for Predictive Unit)")
        if node.get("type") == "UNKNOWN_TYPE" and not node.get("methods"):
            problems.append(f"{path}.type: UNKNOWN_TYPE needs `methods`")
    logger = node.get("logger")
    if isinstance(logger, Mapping) and not logger.get("mode"):
        problems.append(f"{path}.logger.mode: no logger mode specified")
    for i, child in enumerate(_list(node.get("children"))):
        _check_node(child, f"{path}.children[{i}]", containers, where, seen, problems)


def _check_pod_spec(cs: Mapping[str, Any], path: str, problems: list[str]) -> None:
    replicas = cs.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0):
        problems.append(f"{path}.replicas: {replicas!r} is not a non-negative integer")
    names: set[str] = set()
    for k, c in enumerate(_list(_map(cs.get("spec")).get("containers"))):
        cpath = f"{path}.spec.containers[{k}]"
        name = _map(c).get("name")
        if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
            problems.append(f"{cpath}.name: {name!r} is not a DNS-1123 label (lower-case letters, digits, '-')")
        elif name in names:
            problems.append(f"{cpath}.name: container {name!r} appears twice in one pod")
        else:
            names.add(name)
        resources = _map(_map(c).get("resources"))
        for kind in ("requests", "limits"):
            for resource, value in _map(resources.get(kind)).items():
                if isinstance(value, bool) or not isinstance(value, int | float | str) or (
                        isinstance(value, str) and not _QUANTITY.match(value)):
                    problems.append(f"{cpath}.resources.{kind}.{resource}: {value!r} is not a Kubernetes quantity")


def _check_traffic(predictors: list[Any], problems: list[str]) -> None:
    total, shadows, live = 0, 0, 0
    for i, p in enumerate(predictors):
        traffic = _map(p).get("traffic", 0)
        if isinstance(traffic, bool) or not isinstance(traffic, int):
            problems.append(f"spec.predictors[{i}].traffic: {traffic!r} is not an integer percentage")
            continue
        if _map(p).get("shadow") is True:
            shadows += 1
            if shadows > 1:
                problems.append(f"spec.predictors[{i}].shadow: only one shadow predictor is allowed")
            if not 0 <= traffic <= 100:
                problems.append(f"spec.predictors[{i}].traffic: shadow traffic must be within [0, 100]")
        else:
            live += 1
            total += traffic
    if live > 1 and total != 100:
        problems.append(f"spec.predictors[*].traffic: sums to {total}; traffic must sum to 100 for multiple "
                        "predictors")
    if len(predictors) == 1 and 0 < total < 100:
        problems.append("spec.predictors[0].traffic: a single predictor's traffic must be 100 when set")
    if len(predictors) == 1 and _map(predictors[0]).get("shadow") is True:
        problems.append("spec.predictors[0].shadow: a shadow cannot be the only predictor")


def validate_seldon_deployment(obj: Mapping[str, Any]) -> list[str]:
    """Problems Seldon's operator (or Kubernetes, once it makes the Deployments) would reject, each naming its
    field (`spec.predictors[0].graph.children[0]: no container named 'classifier' ...`); [] if none."""
    problems: list[str] = []
    if obj.get("apiVersion") != "machinelearning.seldon.io/v1":
        problems.append(f"apiVersion: {obj.get('apiVersion')!r}; expected 'machinelearning.seldon.io/v1'")
    if obj.get("kind") != "SeldonDeployment":
        problems.append(f"kind: {obj.get('kind')!r}; expected 'SeldonDeployment'")
    name = _map(obj.get("metadata")).get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    spec = _map(obj.get("spec"))
    for key, allowed in (("protocol", PROTOCOLS), ("transport", TRANSPORTS), ("serverType", SERVER_TYPES)):
        value = spec.get(key)
        if value not in (None, "") and value not in allowed:
            problems.append(f"spec.{key}: {value!r} is not one of {', '.join(allowed)}")
    predictors = _list(spec.get("predictors"))
    if not predictors:
        problems.append("spec.predictors: the deployment has no predictors")
    names: dict[str, int] = {}
    for i, p in enumerate(predictors):
        where = f"spec.predictors[{i}]"
        p = _map(p)
        pname = p.get("name")
        if not isinstance(pname, str) or not _DNS_LABEL.match(pname):
            problems.append(f"{where}.name: {pname!r} is not a DNS-1123 label")
        elif pname in names:
            problems.append(f"{where}.name: duplicate predictor name {pname!r} (also spec.predictors[{names[pname]}])")
        else:
            names[pname] = i
        if "graph" not in p:
            problems.append(f"{where}.graph: a predictor needs a graph")
        else:
            _check_node(p.get("graph"), f"{where}.graph", _containers(p), where, {}, problems)
        for j, cs in enumerate(_list(p.get("componentSpecs"))):
            _check_pod_spec(_map(cs), f"{where}.componentSpecs[{j}]", problems)
    _check_traffic(predictors, problems)
    return problems
