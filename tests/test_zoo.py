"""The demo variant families: architectures, the repositories build_repository writes, and `ipa models`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from conftest import MLServer
from mlserver.settings import ModelSettings, Settings

from adapter.cli import main
from mlserver_ipa.settings import RuntimeSettings
from mlserver_ipa.zoo import FAMILIES, BuildArgumentError, BuiltVariant, build_repository

SMALL = 32  # resnet side used here: the weights (and so the file) are the same size at any resolution
VARIANTS = ["resnet18", "resnet50"]

# Published parameter counts: torchvision's (its BatchNorms have 2 parameters a channel where our folded
# convs have 1 bias), and ultralytics' fused YOLOv5 v6.0 summaries (the same folding as ours).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
YOLOV5_FUSED_PARAMS = {"yolov5n": 1_867_405, "yolov5s": 7_225_885}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository("resnet", tmp_path_factory.mktemp("zoo") / "repo", VARIANTS, SMALL)


def run(path: Path, batch: int, side: int) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    x = np.random.default_rng(1).standard_normal((batch, 3, side, side)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True)) | {"input": x}


def parameter_counts(path: Path) -> tuple[int, int]:
    """(all weights and biases, the biases of the folded convolutions only)."""
    inits = onnx.load(str(path)).graph.initializer
    total = sum(int(np.prod(t.dims)) for t in inits if t.name.endswith((".weight", ".bias")))
    conv_bias = sum(int(np.prod(t.dims)) for t in inits if t.name.endswith(".bias") and not t.name.startswith("fc"))
    return total, conv_bias


def test_families_carry_the_model_card_accuracies() -> None:
    assert {v.name: v.accuracy for v in FAMILIES["resnet"].variants} == {
        "resnet18": 69.76, "resnet34": 73.31, "resnet50": 76.13, "resnet101": 77.37, "resnet152": 78.31,
    }
    assert {v.name: v.accuracy for v in FAMILIES["yolo"].variants} == {
        "yolov5n": 45.7, "yolov5s": 56.8, "yolov5m": 64.1, "yolov5l": 67.3, "yolov5x": 68.9,
    }
    assert FAMILIES["resnet"].inputs()[0].shape == (-1, 3, 64, 64)
    assert [s.shape for s in FAMILIES["yolo"].outputs()] == [(-1, 1008, 85), (-1, 3, 64, 64)]
    # the detector's crop is the classifier's input: the pipeline passes one on as the other
    assert FAMILIES["yolo"].outputs()[1].shape == FAMILIES["resnet"].inputs()[0].shape


def test_repository_layout_is_what_mlserver_and_the_runtime_read(repo: Path) -> None:
    assert json.loads((repo / "settings.json").read_text()) == {
        "parallel_workers": 0, "debug": False, "host": "127.0.0.1", "http_port": 8080, "grpc_port": 8081, "metrics_port": 8082,
    }
    Settings.model_validate_json((repo / "settings.json").read_text())
    raw = json.loads((repo / "resnet" / "model-settings.json").read_text())
    settings = ModelSettings.model_validate(raw)
    assert settings.name == "resnet"
    assert raw["implementation"] == "mlserver_ipa.runtime.VariantRuntime"
    assert [(t.name, t.datatype, t.shape) for t in settings.inputs] == [("input", "FP32", [-1, 3, SMALL, SMALL])]
    assert [(t.name, t.datatype, t.shape) for t in settings.outputs] == [("output", "FP32", [-1, 1000])]
    extra = RuntimeSettings.model_validate(raw["parameters"]["extra"])
    assert [(v.name, v.uri, v.accuracy) for v in extra.variants] == [
        ("resnet18", "resnet18.onnx", 69.76), ("resnet50", "resnet50.onnx", 76.13),
    ]
    assert extra.active == "resnet18"
    assert sorted(p.name for p in (repo / "resnet").glob("*.onnx")) == ["resnet18.onnx", "resnet50.onnx"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_resnet_runs_with_a_dynamic_batch_and_the_real_architecture(repo: Path, variant: str) -> None:
    path = repo / "resnet" / f"{variant}.onnx"
    for batch in (1, 3):
        out = run(path, batch, SMALL)["output"]
        assert out.shape == (batch, 1000) and out.dtype == np.float32
        assert np.isfinite(out).all()
        assert 0.2 < float(out.std()) < 5.0  # calibrated: logits neither explode nor vanish
    total, conv_bias = parameter_counts(path)
    assert total + conv_bias == TORCHVISION_PARAMS[variant]


def test_building_is_deterministic_and_skips_what_is_up_to_date(repo: Path, tmp_path: Path) -> None:
    other = build_repository("resnet", tmp_path / "again", ["resnet18"], SMALL)
    assert (other / "resnet" / "resnet18.onnx").read_bytes() == (repo / "resnet" / "resnet18.onnx").read_bytes()

    done: list[BuiltVariant] = []
    mtime = (other / "resnet" / "resnet18.onnx").stat().st_mtime_ns
    build_repository("resnet", other, ["resnet18"], SMALL, progress=done.append)
    assert [(d.name, d.rebuilt) for d in done] == [("resnet18", False)]
    assert (other / "resnet" / "resnet18.onnx").stat().st_mtime_ns == mtime

    done.clear()
    build_repository("resnet", other, ["resnet18"], 40, progress=done.append)  # a new resolution rebuilds
    assert [(d.name, d.rebuilt) for d in done] == [("resnet18", True)]
    record = json.loads((other / "resnet" / "build.json").read_text())
    assert record["resnet18"]["params"]["resolution"] == 40
    settings = json.loads((other / "resnet" / "model-settings.json").read_text())
    assert settings["inputs"][0]["shape"] == [-1, 3, 40, 40]
    assert run(other / "resnet" / "resnet18.onnx", 2, 40)["output"].shape == (2, 1000)


def test_detector_outputs_detections_and_the_crop_for_the_next_stage(tmp_path: Path) -> None:
    side, crop = 64, 32
    repo = build_repository("yolo", tmp_path / "repo", ["yolov5s", "yolov5n"], side, "detector", crop=crop)
    raw = json.loads((repo / "detector" / "model-settings.json").read_text())
    assert raw["name"] == "detector"
    assert raw["parameters"]["extra"]["active"] == "yolov5n"  # the smallest, whatever order they came in
    boxes = 3 * ((side // 8) ** 2 + (side // 16) ** 2 + (side // 32) ** 2)
    assert raw["outputs"] == [
        {"name": "detections", "datatype": "FP32", "shape": [-1, boxes, 85]},
        {"name": "output", "datatype": "FP32", "shape": [-1, 3, crop, crop]},
    ]
    for variant in ("yolov5n", "yolov5s"):
        path = repo / "detector" / f"{variant}.onnx"
        out = run(path, 2, side)
        assert out["detections"].shape == (2, boxes, 85) and out["detections"].dtype == np.float32
        assert np.isfinite(out["detections"]).all()
        assert ((out["detections"] > 0) & (out["detections"] < 1)).all()  # sigmoid scores, not saturated
        # bilinear halving with half-pixel centres is exactly a 2x2 mean
        halved = out["input"].reshape(2, 3, crop, 2, crop, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(out["output"], halved, rtol=1e-5, atol=1e-5)
        assert parameter_counts(path)[0] == YOLOV5_FUSED_PARAMS[variant]


def test_mlserver_serves_a_detector_and_classifier_repository_as_built(
    tmp_path: Path, start_mlserver: Callable[..., MLServer]
) -> None:
    """One repository, both families; the detector's `output` crop is a valid `input` of the classifier."""
    both = build_repository("yolo", tmp_path / "both", ["yolov5n"], 64, crop=SMALL)
    build_repository("resnet", both, ["resnet18"], SMALL)
    server = start_mlserver(both)
    assert server.models == ["resnet", "yolo"]
    client = triton.InferenceServerClient(server.http_host)

    def infer(model: str, x: np.ndarray, outputs: list[str]) -> triton.InferResult:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)  # MLServer's REST takes JSON tensors only
        wanted = [triton.InferRequestedOutput(name, binary_data=False) for name in outputs]
        return client.infer(model, [tensor], outputs=wanted)

    image = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    detected = infer("yolo", image, ["detections", "output"])
    assert detected.as_numpy("detections").shape == (1, 252, 85)
    crop = detected.as_numpy("output")
    assert crop.shape == (1, 3, SMALL, SMALL)
    logits = infer("resnet", crop, ["output"]).as_numpy("output")
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        ("vgg", {}, "unknown family 'vgg'"),
        ("resnet", {"variants": ["resnet19"]}, "unknown resnet variant 'resnet19'"),
        ("resnet", {"variants": []}, "no variants"),
        ("yolo", {"resolution": 100}, "multiple of 32"),
        ("resnet", {"crop": 32}, "no crop"),
        ("resnet", {"model_name": "../x"}, "model name"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, family: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(BuildArgumentError, match=message):
        build_repository(family, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_cli_lists_and_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "resnet152  78.31" in listing and "yolov5x    68.9" in listing

    out = tmp_path / "repo"
    assert main(["models", "build", "--family", "resnet", "--out", str(out), "--variants", "resnet18",
                 "--resolution", str(SMALL)]) == 0
    printed = capsys.readouterr().out
    assert "resnet18   built" in printed and " ms" in printed
    assert (out / "resnet" / "resnet18.onnx").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["--family", "vgg"],
        ["--family", "resnet", "--variants", "resnet18,resnet19"],
        ["--family", "yolo", "--resolution", "100"],
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["models", "build", "--out", str(tmp_path / "repo"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ipa models: error: ")
