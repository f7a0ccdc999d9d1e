"""ResNet-18/34/50/101/152 as ONNX graphs: torchvision's architectures with deterministic random weights.

The layout follows torchvision exactly (ResNet v1.5: in a Bottleneck the stride sits on the 3x3 conv): a 7x7
stride-2 stem and a 3x3 stride-2 max pool, four stages of BasicBlocks (18/34) or Bottlenecks (50/101/152), a
global average pool and a 1000-class fully connected layer. Input `input` [batch, 3, R, R] FP32, output
`output` [batch, 1000] FP32 logits; the batch dimension is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mlserver_ipa.zoo.graph import GraphBuilder, probe_images

NUM_CLASSES = 1000
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


@dataclass(frozen=True)
class ResNetArch:
    """One torchvision ResNet: its block type and the number of blocks in each of the four stages."""

    bottleneck: bool
    layers: tuple[int, int, int, int]


ARCHITECTURES: dict[str, ResNetArch] = {
    "resnet18": ResNetArch(bottleneck=False, layers=(2, 2, 2, 2)),
    "resnet34": ResNetArch(bottleneck=False, layers=(3, 4, 6, 3)),
    "resnet50": ResNetArch(bottleneck=True, layers=(3, 4, 6, 3)),
    "resnet101": ResNetArch(bottleneck=True, layers=(3, 4, 23, 3)),
    "resnet152": ResNetArch(bottleneck=True, layers=(3, 8, 36, 3)),
}


def build_resnet(variant: str, resolution: int, seed: int) -> onnx.ModelProto:
    """The ONNX graph of `variant` (a key of ARCHITECTURES) for square inputs of side `resolution`."""
    arch = ARCHITECTURES[variant]
    g = GraphBuilder(variant, seed)
    # The last norm of each residual branch has gamma 1/sqrt(blocks): the trunk's variance then grows by at
    # most a factor e over the network instead of doubling at every block (what zero-init-residual aims at).
    residual_gamma = 1.0 / float(np.sqrt(sum(arch.layers)))

    x = g.input("input", ["batch", 3, resolution, resolution], probe_images(resolution))
    x = g.relu(g.conv(x, 64, 7, 2, 3, name="conv1"))
    x = g.maxpool(x, 3, 2, 1)

    for stage, (planes, stride, blocks) in enumerate(zip(STAGE_PLANES, STAGE_STRIDES, arch.layers, strict=True)):
        for block in range(blocks):
            name = f"layer{stage + 1}.{block}"
            s = stride if block == 0 else 1
            if arch.bottleneck:
                x = _bottleneck(g, x, planes, s, name, residual_gamma)
            else:
                x = _basic_block(g, x, planes, s, name, residual_gamma)

    x = g.flatten(g.global_average_pool(x))
    logits = g.gemm(x, NUM_CLASSES, name="fc")
    g.output(logits, "output", ["batch", NUM_CLASSES])
    return g.model(f"{variant} (torchvision architecture, random weights), input {resolution}x{resolution}")


def _shortcut(g: GraphBuilder, x: str, c_out: int, stride: int, name: str) -> str:
    if stride == 1 and g.channels(x) == c_out:
        return x
    return g.conv(x, c_out, 1, stride, 0, name=f"{name}.downsample")


def _basic_block(g: GraphBuilder, x: str, planes: int, stride: int, name: str, gamma: float) -> str:
    y = g.relu(g.conv(x, planes, 3, stride, name=f"{name}.conv1"))
    y = g.conv(y, planes, 3, 1, name=f"{name}.conv2", gamma=gamma)
    return g.relu(g.add(y, _shortcut(g, x, planes, stride, name), name=f"{name}.add"))


def _bottleneck(g: GraphBuilder, x: str, planes: int, stride: int, name: str, gamma: float) -> str:
    c_out = planes * 4  # the Bottleneck's expansion
    y = g.relu(g.conv(x, planes, 1, 1, 0, name=f"{name}.conv1"))
    y = g.relu(g.conv(y, planes, 3, stride, name=f"{name}.conv2"))
    y = g.conv(y, c_out, 1, 1, 0, name=f"{name}.conv3", gamma=gamma)
    return g.relu(g.add(y, _shortcut(g, x, c_out, stride, name), name=f"{name}.add"))
