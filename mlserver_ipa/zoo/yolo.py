"""YOLOv5 n/s/m/l/x (v6.0 layout) as ONNX graphs with deterministic random weights, plus the classifier crop.

The architecture is ultralytics' yolov5*.yaml: a CSP-Darknet backbone of Conv-BN-SiLU layers and C3 blocks
ending in SPPF, a PANet neck (upsample + concat top-down, strided conv + concat bottom-up), and a Detect head
of 1x1 convs giving 3 anchors x 85 channels (4 box + 1 objectness + 80 COCO classes) at strides 8, 16 and 32.
Sizes differ only by width and depth multipliers, rounded as YOLOv5 rounds them.

Outputs, for input `input` [batch, 3, R, R] (R a multiple of 32):
- `detections` [batch, A, 85], A = 3 * ((R/8)^2 + (R/16)^2 + (R/32)^2), sigmoid scores as YOLOv5 exports them
  before the grid decoding (the demo weights are random, so boxes carry no meaning; latency does);
- `output` [batch, 3, crop, crop]: the input image resized (bilinear) to the next stage's resolution. A stage's
  `output` becomes the next stage's `input`, so this is what a detector -> classifier pipeline passes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from mlserver_ipa.zoo.graph import GraphBuilder, probe_images

NUM_ANCHORS = 3
NUM_OUTPUTS = 85  # x, y, w, h, objectness, 80 classes
STRIDES = (8, 16, 32)
BASE_CHANNELS = (64, 128, 256, 512, 1024)
BASE_REPEATS = (3, 6, 9, 3)  # the backbone's C3 blocks; the neck's are 3 each


@dataclass(frozen=True)
class YoloScale:
    """Width and depth multipliers of one YOLOv5 size."""

    width: float
    depth: float

    def channels(self, c: int) -> int:
        """YOLOv5's make_divisible(c * width, 8)."""
        return math.ceil(c * self.width / 8) * 8

    def repeats(self, n: int) -> int:
        """YOLOv5's max(round(n * depth), 1)."""
        return max(round(n * self.depth), 1) if n > 1 else n


SCALES: dict[str, YoloScale] = {
    "yolov5n": YoloScale(width=0.25, depth=0.33),
    "yolov5s": YoloScale(width=0.50, depth=0.33),
    "yolov5m": YoloScale(width=0.75, depth=0.67),
    "yolov5l": YoloScale(width=1.00, depth=1.00),
    "yolov5x": YoloScale(width=1.25, depth=1.33),
}


def num_detections(resolution: int) -> int:
    """A, the number of candidate boxes the head yields for an R x R input."""
    return NUM_ANCHORS * sum((resolution // s) ** 2 for s in STRIDES)


def build_yolo(variant: str, resolution: int, crop: int, seed: int) -> onnx.ModelProto:
    """The ONNX graph of `variant` (a key of SCALES) for R x R inputs, with a `crop` x `crop` image output."""
    if resolution % STRIDES[-1]:
        raise ValueError(f"yolo resolution must be a multiple of {STRIDES[-1]}, got {resolution}")
    scale = SCALES[variant]
    c1, c2, c3, c4, c5 = (scale.channels(c) for c in BASE_CHANNELS)
    n1, n2, n3, n4 = (scale.repeats(n) for n in BASE_REPEATS)
    n_neck = scale.repeats(3)
    g = GraphBuilder(variant, seed)
    image = g.input("input", ["batch", 3, resolution, resolution], probe_images(resolution))

    # backbone
    x = _conv(g, image, c1, 6, 2, 2, "model.0")  # P1/2
    x = _conv(g, x, c2, 3, 2, None, "model.1")  # P2/4
    x = _c3(g, x, c2, n1, True, "model.2")
    x = _conv(g, x, c3, 3, 2, None, "model.3")  # P3/8
    p3 = _c3(g, x, c3, n2, True, "model.4")
    x = _conv(g, p3, c4, 3, 2, None, "model.5")  # P4/16
    p4 = _c3(g, x, c4, n3, True, "model.6")
    x = _conv(g, p4, c5, 3, 2, None, "model.7")  # P5/32
    x = _c3(g, x, c5, n4, True, "model.8")
    x = _sppf(g, x, c5, "model.9")

    # neck: top-down then bottom-up
    h10 = _conv(g, x, c4, 1, 1, None, "model.10")
    x = g.concat([g.upsample(h10, 2, name="model.11"), p4], 1, name="model.12")
    x = _c3(g, x, c4, n_neck, False, "model.13")
    h14 = _conv(g, x, c3, 1, 1, None, "model.14")
    x = g.concat([g.upsample(h14, 2, name="model.15"), p3], 1, name="model.16")
    out_small = _c3(g, x, c3, n_neck, False, "model.17")  # P3/8
    x = _conv(g, out_small, c3, 3, 2, None, "model.18")
    x = g.concat([x, h14], 1, name="model.19")
    out_medium = _c3(g, x, c4, n_neck, False, "model.20")  # P4/16
    x = _conv(g, out_medium, c4, 3, 2, None, "model.21")
    x = g.concat([x, h10], 1, name="model.22")
    out_large = _c3(g, x, c5, n_neck, False, "model.23")  # P5/32

    # Detect head: per scale [b, 255, H, W] -> [b, 3, 85, HW] -> [b, 3, HW, 85] -> [b, 3*HW, 85]
    heads = []
    for i, feat in enumerate((out_small, out_medium, out_large)):
        name = f"model.24.m.{i}"
        y = g.conv(feat, NUM_ANCHORS * NUM_OUTPUTS, 1, 1, 0, name=name)
        y = g.reshape(y, [0, NUM_ANCHORS, NUM_OUTPUTS, -1], name=f"{name}.reshape")
        y = g.transpose(y, [0, 1, 3, 2], name=f"{name}.transpose")
        heads.append(g.reshape(y, [0, -1, NUM_OUTPUTS], name=f"{name}.flatten"))
    detections = g.sigmoid(g.concat(heads, 1, name="model.24.cat"))
    g.output(detections, "detections", ["batch", num_detections(resolution), NUM_OUTPUTS])

    crop_image = g.resize(image, crop, crop, name="crop")
    g.output(crop_image, "output", ["batch", 3, crop, crop])
    return g.model(
        f"{variant} (ultralytics v6.0 architecture, random weights), input {resolution}x{resolution}, "
        f"crop {crop}x{crop}"
    )


def _conv(g: GraphBuilder, x: str, c_out: int, k: int, s: int, p: int | None, name: str, gamma: float = 1.0) -> str:
    """YOLOv5's Conv: Conv2d + BatchNorm (folded) + SiLU."""
    return g.silu(g.conv(x, c_out, k, s, p, name=f"{name}.conv", gamma=gamma))


def _c3(g: GraphBuilder, x: str, c_out: int, n: int, shortcut: bool, name: str) -> str:
    """CSP bottleneck with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x))); `m` is n Bottlenecks."""
    hidden = c_out // 2
    # The residual branches' last norms are damped like ResNet's, so a deep C3 does not swamp its input.
    residual_gamma = 1.0 / float(np.sqrt(n)) if shortcut else 1.0
    y = _conv(g, x, hidden, 1, 1, None, f"{name}.cv1")
    for i in range(n):
        b = f"{name}.m.{i}"
        z = _conv(g, y, hidden, 1, 1, None, f"{b}.cv1")
        z = _conv(g, z, hidden, 3, 1, None, f"{b}.cv2", gamma=residual_gamma)
        y = g.add(y, z, name=f"{b}.add") if shortcut else z
    skip = _conv(g, x, hidden, 1, 1, None, f"{name}.cv2")
    return _conv(g, g.concat([y, skip], 1, name=f"{name}.cat"), c_out, 1, 1, None, f"{name}.cv3")


def _sppf(g: GraphBuilder, x: str, c_out: int, name: str) -> str:
    """Spatial pyramid pooling, fast: three chained 5x5 max pools concatenated with their input."""
    x = _conv(g, x, g.channels(x) // 2, 1, 1, None, f"{name}.cv1")
    y1 = g.maxpool(x, 5, 1, 2)
    y2 = g.maxpool(y1, 5, 1, 2)
    y3 = g.maxpool(y2, 5, 1, 2)
    return _conv(g, g.concat([x, y1, y2, y3], 1, name=f"{name}.cat"), c_out, 1, 1, None, f"{name}.cv2")
