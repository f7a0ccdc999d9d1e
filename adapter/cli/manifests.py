"""`ipa manifests GRAPH [--decision FILE] [--image IMAGE] [--namespace NS] [--out DIR]` renders what a pipeline
needs on Kubernetes with Seldon Core: its SeldonDeployment (`adapter.kubernetes.seldon`) and the ConfigMap `ipa-graph` the
adapter reads (the graph and the profiles it names), as YAML on stdout or as files in DIR.

Every rendered SeldonDeployment is checked against Seldon's operator rules, and against the CRD's schema when
`--crd` names one (`kubectl get crd seldondeployments.machinelearning.seldon.io -o yaml > crd.yaml`); fields
the CRD does not know, which the API server would drop, are warnings.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from adapter.decision.model import Decision
from adapter.errors import SpecError, UsageError
from adapter.kubernetes.seldon import (
    PlanError,
    RenderOptions,
    parse_cpu,
    plan_deployment,
    render_seldon_deployment,
    validate_seldon_deployment,
)
from adapter.spec import GraphSpec, load_spec

CONFIG_MAP = "ipa-graph"
CONFIG_MAP_LIMIT = 1024 * 1024  # bytes: what etcd takes for one object
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_KEY = re.compile(r"[^-._a-zA-Z0-9]")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the graph, the profiles) as literal blocks, readable in `kubectl get -o yaml`."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "manifests", help="render a pipeline's SeldonDeployment and the adapter's ConfigMap (Kubernetes)",
        description="Render what a pipeline needs on Kubernetes with Seldon Core: its SeldonDeployment (one "
        "predictor chaining the stages, CPU request = limit, resizable in place) and the ConfigMap ipa-graph the "
        "adapter reads (the graph and its profiles), as YAML on stdout or as files in DIR. The SeldonDeployment "
        "is checked against Seldon's operator rules, and against a CRD's schema with --crd.")
    p.add_argument("graph", metavar="GRAPH", help="inference-graph YAML file")
    p.add_argument("--decision", metavar="FILE", help="a decision (`ipa solve --json` output) to render; "
                   "default: every stage's static configuration")
    p.add_argument("--image", default=RenderOptions.image, help="runtime image (default: %(default)s)")
    p.add_argument("--namespace", default=RenderOptions.namespace, help="namespace (default: %(default)s)")
    p.add_argument("--models-dir", default=RenderOptions.models_dir,
                   help="where the image keeps the ONNX variants (default: %(default)s)")
    p.add_argument("--memory", default=RenderOptions.memory,
                   help="memory request = limit of each runtime container (default: %(default)s)")
    p.add_argument("--crd", metavar="FILE", help="check the SeldonDeployment against this CRD's schema too")
    p.add_argument("--no-config", action="store_true", help="render the SeldonDeployment only")
    p.add_argument("--out", metavar="DIR", help="write one YAML file per object into DIR instead of stdout")
    p.set_defaults(func=_run)


def load_decision(path: str) -> Decision:
    """A decision file (JSON, or YAML); `SpecError` naming the file and field."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SpecError(str(p), "(file)", e.strerror or str(e)) from None
    except yaml.YAMLError as e:
        raise SpecError(str(p), "(file)", f"not valid JSON or YAML: {e}") from None
    try:
        return Decision.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")
        raise SpecError(str(p), where or "(top level)", err["msg"]) from None


def graph_config_map(spec: GraphSpec, namespace: str) -> tuple[dict[str, Any], list[str]]:
    """The ConfigMap holding the graph (profile paths rewritten to its own keys) and the profiles that exist;
    notes for the profiles that do not."""
    assert spec.source is not None
    raw = yaml.safe_load(spec.source.read_text())
    data: dict[str, str] = {}
    keys: dict[Path, str] = {}
    notes = []
    for i, stage in enumerate(spec.stages):
        path = spec.profile_path(stage)
        if path not in keys:
            key = _KEY.sub("-", path.name)
            while key in data or key == "graph.yaml":
                key = f"{stage.name}-{key}"
            keys[path] = key
            if path.exists():
                data[key] = path.read_text()
            else:
                notes.append(f"{spec.source}: stages[{i}].profile: {stage.profile} does not exist; the adapter "
                             f"needs it: run `{spec.profile_command(stage)}`")
        raw["stages"][i]["profile"] = keys[path]
    data["graph.yaml"] = yaml.safe_dump(raw, sort_keys=False)
    size = sum(len(v.encode()) for v in data.values())
    if size > CONFIG_MAP_LIMIT:
        raise UsageError(f"{spec.source}: the graph and its profiles take {size} bytes, more than a ConfigMap "
                         "holds (1 MiB): use --no-config and bake them into the adapter image")
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": CONFIG_MAP, "namespace": namespace,
                        "labels": {"ipa/graph": spec.name, "app.kubernetes.io/part-of": "ipa"}},
           "data": dict(sorted(data.items()))}
    return obj, notes


def _check_options(args: argparse.Namespace) -> RenderOptions:
    if not _DNS_LABEL.match(args.namespace) or len(args.namespace) > 63:
        raise UsageError(f"--namespace {args.namespace!r}: not a DNS-1123 label (lower-case letters, digits, '-')")
    if not args.image.strip() or any(c.isspace() for c in args.image):
        raise UsageError(f"--image {args.image!r}: not an image reference")
    if parse_cpu(args.memory) is None:
        raise UsageError(f"--memory {args.memory!r}: not a Kubernetes quantity (e.g. 2Gi)")
    if not args.models_dir.startswith("/"):
        raise UsageError(f"--models-dir {args.models_dir!r}: must be an absolute path inside the image")
    return RenderOptions(image=args.image, namespace=args.namespace, models_dir=args.models_dir,
                         memory=args.memory)


def _crd_checks(obj: dict[str, Any], crd: str) -> None:
    from adapter.kubernetes.schema import load_crd_schema, pruned_fields, validate_against_crd

    schema = load_crd_schema(crd)
    errors = validate_against_crd(obj, schema)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{crd}: the SeldonDeployment does not validate: {errors[0]}{more}")
    for field in pruned_fields(obj, schema):
        note = (" (Seldon Core < 1.19; harmless: NotRequired is Kubernetes' default for CPU)"
                if field.endswith("resizePolicy") else "")
        print(f"ipa manifests: warning: {crd} has no field {field}: the API server drops it{note}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    options = _check_options(args)
    spec = load_spec(args.graph)
    decision = load_decision(args.decision) if args.decision else None
    try:
        plan = plan_deployment(spec, decision)
    except PlanError as e:
        raise SpecError(args.decision, e.field, e.reason) from None
    for p in plan:
        for c in p.components:
            if len(c.groups) > 1:
                t = c.template
                print(f"ipa manifests: note: stage {c.stage} runs {len(c.groups)} configurations; the pod template "
                      f"holds one ({t.variant}, batch {t.batch}, {t.cores:g} cores): the in-place executor "
                      "configures the others on the running pods", file=sys.stderr)
    deployment = render_seldon_deployment(spec, plan, options)
    problems = validate_seldon_deployment(deployment)
    if problems:  # a bug here rather than in the user's input, but say it the same way
        raise UsageError(f"the rendered SeldonDeployment breaks Seldon's rules: {'; '.join(problems)}")
    if args.crd:
        _crd_checks(deployment, args.crd)
    objects = [deployment]
    if not args.no_config:
        config, notes = graph_config_map(spec, options.namespace)
        for n in notes:
            print(f"ipa manifests: note: {n}", file=sys.stderr)
        objects.insert(0, config)
    if args.out is None:
        sys.stdout.write(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120))
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            path = out / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            path.write_text(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120))
            print(path)
    except OSError as e:
        raise UsageError(f"--out {args.out}: {e.strerror or e}") from None
    return 0

