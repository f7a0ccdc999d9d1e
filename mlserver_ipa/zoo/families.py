"""The demo variant families: which variants each has, their model-card accuracies, and their tensors.

Other parts look a family up in `mlserver_ipa.zoo.FAMILIES` (these ONNX ones and the `transformers` ones of
`transformers_families`): inference-graph specs take accuracies and tensor
shapes from it, the profiler and the model repository builder take the variants and how to build them. The
accuracies are the published model cards' (DESIGN.md §5); the weights are random (see graph.py), so only
the latency of these models is real.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from mlserver_ipa.zoo.resnet import NUM_CLASSES, build_resnet
from mlserver_ipa.zoo.yolo import NUM_OUTPUTS, STRIDES, build_yolo, num_detections


@dataclass(frozen=True)
class Variant:
    """One member of a family and the accuracy its model card reports (percent)."""

    name: str
    accuracy: float


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as MLServer's metadata describes it; -1 marks the dynamic batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, object]:
        """The entry for model-settings.json `inputs` / `outputs`."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelFamily:
    """A family of variants serving one task with the same tensors, smallest (fastest) variant first."""

    name: str
    task: str
    metric: str
    variants: tuple[Variant, ...]

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def accuracy(self, variant: str) -> float:
        for v in self.variants:
            if v.name == variant:
                return v.accuracy
        raise KeyError(f"{variant!r} is not a {self.name} variant; known: {', '.join(self.variant_names)}")


@dataclass(frozen=True)
class Family(ModelFamily):
    """An ONNX family built node by node (`graph`): image input of a chosen resolution."""

    default_resolution: int
    resolution_step: int
    """Input sides must be a positive multiple of this (the network's total stride where it matters)."""
    default_crop: int | None
    """Side of the image the family passes on as `output` to the next stage; None if it passes none."""
    builder: Callable[[str, int, int | None, int], onnx.ModelProto]
    """(variant, resolution, crop, seed) -> the ONNX graph."""
    output_specs: Callable[[int, int | None], tuple[TensorSpec, ...]]
    """(resolution, crop) -> the output tensors."""

    def inputs(self, resolution: int | None = None) -> tuple[TensorSpec, ...]:
        r = resolution or self.default_resolution
        return (TensorSpec("input", "FP32", (-1, 3, r, r)),)

    def outputs(self, resolution: int | None = None, crop: int | None = None) -> tuple[TensorSpec, ...]:
        return self.output_specs(resolution or self.default_resolution, crop or self.default_crop)

    def build(self, variant: str, resolution: int | None = None, crop: int | None = None) -> onnx.ModelProto:
        """The ONNX graph of `variant`; the same arguments always give the same graph, byte for byte."""
        self.accuracy(variant)  # raises KeyError for a stranger
        return self.builder(
            variant, resolution or self.default_resolution, crop or self.default_crop, variant_seed(variant)
        )


def variant_seed(variant: str) -> int:
    """The weight seed of a variant: fixed by its name, so builds are reproducible anywhere."""
    return zlib.crc32(variant.encode())


def _resnet(variant: str, resolution: int, crop: int | None, seed: int) -> onnx.ModelProto:
    return build_resnet(variant, resolution, seed)


def _resnet_outputs(resolution: int, crop: int | None) -> tuple[TensorSpec, ...]:
    return (TensorSpec("output", "FP32", (-1, NUM_CLASSES)),)


def _yolo(variant: str, resolution: int, crop: int | None, seed: int) -> onnx.ModelProto:
    assert crop is not None, "the yolo family always has a crop size"
    return build_yolo(variant, resolution, crop, seed)


def _yolo_outputs(resolution: int, crop: int | None) -> tuple[TensorSpec, ...]:
    assert crop is not None, "the yolo family always has a crop size"
    return (
        TensorSpec("detections", "FP32", (-1, num_detections(resolution), NUM_OUTPUTS)),
        TensorSpec("output", "FP32", (-1, 3, crop, crop)),
    )


ONNX_FAMILIES: dict[str, Family] = {
    "resnet": Family(
        name="resnet",
        task="image classification",
        metric="ImageNet top-1 (%)",
        variants=(
            Variant("resnet18", 69.76),
            Variant("resnet34", 73.31),
            Variant("resnet50", 76.13),
            Variant("resnet101", 77.37),
            Variant("resnet152", 78.31),
        ),
        # 64x64 keeps ResNet-152 at batch 1 near 30 ms on one core, so a 2-core machine can show load spikes.
        default_resolution=64,
        resolution_step=1,
        default_crop=None,
        builder=_resnet,
        output_specs=_resnet_outputs,
    ),
    "yolo": Family(
        name="yolo",
        task="object detection",
        metric="COCO mAP@0.5 (%)",
        variants=(
            Variant("yolov5n", 45.7),
            Variant("yolov5s", 56.8),
            Variant("yolov5m", 64.1),
            Variant("yolov5l", 67.3),
            Variant("yolov5x", 68.9),
        ),
        # 128x128 keeps YOLOv5x at batch 1 near 100 ms on one core.
        default_resolution=128,
        resolution_step=STRIDES[-1],
        default_crop=64,  # the resnet family's default resolution: the crop is the classifier's input
        builder=_yolo,
        output_specs=_yolo_outputs,
    ),
}
