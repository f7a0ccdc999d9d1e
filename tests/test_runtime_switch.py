"""In-place switching under continuous load: variant and thread changes through the control endpoint while
clients keep sending; not one request may fail, and the metrics show the new variant."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, SMALL_VARIANTS, MLServer, write_model_settings

from mlserver_ipa.client import ControlError, InferResult, V2Client

MODEL = "resnet"
R = SMALL_RESOLUTION


@pytest.fixture(scope="module")
def server(start_mlserver, variant_repo) -> MLServer:
    return start_mlserver(variant_repo)


def gauge(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def test_switch_variant_and_threads_under_load_with_zero_failures(server: MLServer) -> None:
    small, big = SMALL_VARIANTS[0], SMALL_VARIANTS[-1]
    results: list[InferResult] = []
    stop = asyncio.Event()
    x = np.zeros((1, 3, R, R), dtype=np.float32)

    async def sender(client: V2Client, k: int) -> None:
        i = 0
        while not stop.is_set():
            # generous deadlines: a switch must not make anything fail, deadline or not
            results.append(await client.infer(MODEL, x, deadline_ms=30_000, priority=i % 2))
            i += 1

    async with V2Client(server.http_url) as client, V2Client(server.http_url) as control:
        senders = [asyncio.create_task(sender(client, k)) for k in range(4)]

        async def served_since(n: int, at_least: int) -> None:
            while len(results) < n + at_least:
                await asyncio.sleep(0.01)

        await served_since(0, 20)
        states = []
        for change in ({"variant": big}, {"threads": 2}, {"variant": small, "threads": 1, "batch_size": 4},
                       {"variant": big}):
            states.append(await control.control(MODEL, **change))
            await served_since(len(results), 20)  # the new session serves a while under load
        stop.set()
        await asyncio.gather(*senders)
        final = await control.control(MODEL)

    failures = [(r.status, r.error) for r in results if not r.ok]
    assert failures == []
    assert [s["variant"] for s in states] == [big, big, small, big]
    assert [s["threads"] for s in states] == [1, 2, 1, 1]
    assert final["switches"] == 4 and final["variant"] == big
    served_by = {r.parameters["variant"] for r in results}
    assert served_by == {small, big}
    text = server.metrics()
    assert gauge(text, "ipa_active_variant", model=MODEL, variant=big) == 1
    assert gauge(text, "ipa_active_variant", model=MODEL, variant=small) == 0
    assert gauge(text, "ipa_variant_switches_total", model=MODEL) == 4
    assert gauge(text, "ipa_requests_served_total", model=MODEL, variant=big) > 0


def tiny_model(path: Path, resolution: int) -> Path:
    """An ONNX model with the family's input name but another resolution: [N,3,r,r] -> [N,1000]."""
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.ones((3 * resolution * resolution, 1000), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, resolution, resolution])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


async def test_switch_to_a_variant_with_another_signature_is_refused(
    start_mlserver, variant_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    odd = tiny_model(tmp_path_factory.mktemp("odd") / "odd.onnx", R * 2)
    variants = json.loads((variant_repo / MODEL / "model-settings.json").read_text())["parameters"]["extra"]["variants"]
    repo = write_model_settings(variant_repo, MODEL, variants=[*variants, {"name": "odd", "uri": str(odd)}])
    server = start_mlserver(repo)
    async with V2Client(server.http_url) as client:
        with pytest.raises(ControlError) as e:
            await client.control(MODEL, variant="odd")
        assert e.value.status == 422 and "queued requests could not be served" in e.value.reason
        state = await client.control(MODEL)
        assert state["variant"] == SMALL_VARIANTS[0] and state["switches"] == 0
        assert (await client.infer(MODEL, np.zeros((1, 3, R, R), np.float32))).ok
    server.stop()
