"""Checking Kubernetes objects against the schemas the API server uses, before they reach a cluster.

    schema = load_crd_schema("seldondeployments-crd.yaml")   # the CRD's openAPIV3Schema (version v1)
    errors = validate_against_crd(obj, schema)               # what the API server would reject (422)
    dropped = pruned_fields(obj, schema)                     # what it would silently drop (unknown fields)
    errors = validate_core(deployment, "1.33")               # core kinds, with the kubernetes-validate package

Each problem is one line naming the field, `spec.predictors[0].componentSpecs[0].spec.containers[0].resources.
requests.cpu: 'banana' does not match ...`. The CRD comes from the user's cluster (`kubectl get crd
seldondeployments.machinelearning.seldon.io -o yaml`) or Seldon's release; nothing is bundled, as the version
installed is the one that counts (Seldon Core 1.17's CRD has no `resizePolicy`, 1.19's has).

`jsonschema` and `kubernetes-validate` are imported when first used, so the rest of the adapter runs without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import UsageError


def _path(parts: Iterable[object]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def crd_schema(crd: Mapping[str, Any], version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of `version` in a CustomResourceDefinition."""
    for v in (crd.get("spec") or {}).get("versions") or []:
        if v.get("name") == version:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if isinstance(schema, dict):
                return schema
    raise KeyError(f"the CRD has no openAPIV3Schema for version {version!r}")


def load_crd_schema(path: str | Path, version: str = "v1") -> dict[str, Any]:
    """Read a CRD YAML file (the first CustomResourceDefinition in it); `UsageError` naming the file if it is
    not one."""
    p = Path(path)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a CRD is close to 1 MB of YAML
        docs = [d for d in yaml.load_all(p.read_text(), Loader=loader) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{p}: cannot read the CRD: {e}") from None
    for doc in docs:
        if doc.get("kind") == "CustomResourceDefinition":
            try:
                return crd_schema(doc, version)
            except KeyError as e:
                raise UsageError(f"{p}: {e.args[0]}") from None
    raise UsageError(f"{p}: no CustomResourceDefinition in the file")


def validate_against_crd(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Schema violations of `obj`, one line each naming the field; [] if it validates."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - installed with kubernetes-validate
        raise UsageError("validating against a CRD needs the `jsonschema` package (pip install jsonschema)") from None
    # An openAPIV3Schema is JSON Schema draft 4 plus `x-kubernetes-*` keywords, which validators ignore.
    validator = jsonschema.Draft4Validator(dict(schema))
    errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def pruned_fields(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Fields of `obj` the schema does not declare: a structural CRD makes the API server drop them silently.

    Nodes marked `x-kubernetes-preserve-unknown-fields`, and nodes whose schema says nothing (`{}`), keep
    everything; the root `apiVersion`, `kind` and `metadata` are the API server's own.
    """
    out: list[str] = []

    def walk(value: object, node: Mapping[str, Any], path: list[object]) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return
        if isinstance(value, Mapping):
            props = node.get("properties")
            extra = node.get("additionalProperties")
            for key, item in value.items():
                if isinstance(props, Mapping) and key in props:
                    walk(item, props[key], [*path, key])
                elif isinstance(extra, Mapping):
                    walk(item, extra, [*path, key])
                elif isinstance(props, Mapping) and not (not path and key in ("apiVersion", "kind", "metadata")):
                    out.append(_path([*path, key]))
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            for i, item in enumerate(value):
                walk(item, node["items"], [*path, i])

    walk(obj, schema, [])
    return out


def validate_core(obj: Mapping[str, Any], kubernetes_version: str = "1.33") -> list[str]:
    """Problems of a core Kubernetes object (Deployment, Service, Role, ConfigMap, Pod ...) against the
    OpenAPI schemas of `kubernetes_version`, strict (unknown fields are errors); [] if it validates."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:  # pragma: no cover - a dev dependency
        raise UsageError("validating core objects needs the `kubernetes-validate` package") from None
    try:
        kubernetes_validate.validate(dict(obj), kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{_path(e.absolute_path)}: {e.message}"]
    except SchemaNotFoundError as e:
        return [f"apiVersion/kind: {e.message}"]
    return []
