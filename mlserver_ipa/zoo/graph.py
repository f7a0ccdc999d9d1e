"""A small ONNX graph builder for the demo variant families, with deterministic random weights.

The demo families (ResNet, YOLOv5) are built here node by node instead of exported from a framework: no
weights can be downloaded and torch is not a dependency. Every convolution stands for Conv + BatchNorm with
the norm folded in (a weight and a bias), the way an exported inference graph looks, so latency matches the
real architecture.

Weights are He-initialised from one seeded generator. The norm that is folded in is *calibrated*: the builder
runs a fixed probe batch through the graph as it grows (numpy, float64) and scales each layer by its measured
root-mean-square, as folding a trained BatchNorm scales by its running statistics. He scaling alone is not
enough: random SiLU networks drift geometrically (their fixed point is unstable), and a network whose
activations explode or vanish turns into NaNs or denormals, which make CPUs slow in ways real models are not.
The folded scales are rounded to a few significant bits, so the float64 arithmetic's last-bit differences
between BLAS builds cannot change the bytes: the same build call gives the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

OPSET = 18  # Resize with `axes` needs 18; onnxruntime >= 1.17 (our lower bound) runs it
IR_VERSION = 8  # readable by every onnxruntime this project supports

BETA_STD = 0.1  # spread of the folded norm's shift: channels differ a little, as in trained networks
SCALE_BITS = 10  # significant bits kept of each folded scale (see the module docstring)
EPS = 1e-5  # BatchNorm's epsilon

Shape = Sequence[int | str]


def _round_bits(a: np.ndarray, bits: int = SCALE_BITS) -> np.ndarray:
    mantissa, exponent = np.frexp(a)
    return np.ldexp(np.round(mantissa * 2.0**bits) / 2.0**bits, exponent)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(a, -60.0, 60.0)))


class GraphBuilder:
    """Accumulates nodes, seeded initializers and probe activations; each method returns its output's name."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        # Filled in place: building a list and handing it to onnx.helper copies every weight twice more.
        self._model = onnx.ModelProto()
        self._graph = self._model.graph
        # Probe activations (float64) of every tensor on the calibration batch; None past the last weighted layer.
        self.probe: dict[str, np.ndarray | None] = {}

    # -- naming and constants ------------------------------------------------------------------------

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.probe:
            i += 1
            name = f"{base}_{i}"
        return name

    def _node(self, op: str, inputs: Sequence[str], name: str, probe: np.ndarray | None, **attrs: Any) -> str:
        out = self._fresh(name)
        self.probe[out] = probe
        self._graph.node.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, name: str, array: np.ndarray) -> str:
        tensor_name = self._fresh(name)
        self.probe[tensor_name] = None
        tensor = self._graph.initializer.add()
        tensor.name = tensor_name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return tensor_name

    def _p(self, x: str) -> np.ndarray:
        p = self.probe[x]
        if p is None:
            raise ValueError(f"{self.name}: tensor {x!r} has no probe; weighted layers must precede reshapes")
        return p

    def channels(self, x: str) -> int:
        return int(self._p(x).shape[1])

    # -- graph inputs and outputs --------------------------------------------------------------------

    def input(self, name: str, shape: Shape, probe: np.ndarray) -> str:
        """A graph input; `probe` is the calibration batch fed through it while building."""
        self.probe[name] = probe.astype(np.float64)
        self._graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def output(self, tensor: str, name: str, shape: Shape) -> str:
        """Expose `tensor` as graph output `name` (through an Identity, so internal names stay free)."""
        self.probe[name] = self.probe[tensor]
        self._graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"{name}.identity"))
        self._graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    # -- layers with weights -------------------------------------------------------------------------

    def _fold(
        self, raw: np.ndarray, weight: np.ndarray, gamma: float, axes: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A norm folded into `weight`: the scaled weight, its bias, and the probe's output.

        The norm divides by the layer's root-mean-square on the probe (one scale per layer) and adds a small
        random shift per channel. It does not subtract per-channel means: in a random network those are nearly
        constant offsets, and removing them leaves a tiny input-dependent remainder that the scale would then
        blow up for any input other than the probe.
        """
        c_out = weight.shape[0]
        bias = (np.asarray(self.rng.standard_normal(c_out)) * BETA_STD).astype(np.float32)
        scale = float(_round_bits(np.asarray(gamma / np.sqrt(float(np.mean(raw**2)) + EPS))))
        folded = (weight * np.float32(scale)).astype(np.float32)
        probe = raw * scale + np.expand_dims(bias.astype(np.float64), axes)
        return folded, bias, probe

    def conv(
        self, x: str, c_out: int, kernel: int, stride: int = 1, pad: int | None = None, *, name: str,
        gamma: float = 1.0,
    ) -> str:
        """Conv + folded BatchNorm (output std `gamma` on the probe); `pad` defaults to 'same' for odd kernels."""
        p = kernel // 2 if pad is None else pad
        xp = self._p(x)
        c_in = xp.shape[1]
        weight = self.rng.standard_normal((c_out, c_in, kernel, kernel), dtype=np.float32)
        weight *= np.float32(np.sqrt(2.0 / (c_in * kernel * kernel)))  # He initialisation
        padded = np.pad(xp, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
        raw = np.tensordot(windows, weight.astype(np.float64), axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        folded, bias, probe = self._fold(raw, weight, gamma, axes=(0, 2, 3))
        w = self.const(f"{name}.weight", folded)
        b = self.const(f"{name}.bias", bias)
        return self._node(
            "Conv", [x, w, b], name, probe,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[p, p, p, p],
        )

    def gemm(self, x: str, c_out: int, *, name: str, gamma: float = 1.0) -> str:
        """Fully connected layer on [batch, c_in]: y = x W^T + b, calibrated like a conv."""
        xp = self._p(x)
        c_in = xp.shape[1]
        weight = self.rng.standard_normal((c_out, c_in), dtype=np.float32) * np.float32(np.sqrt(1.0 / c_in))
        raw = xp @ weight.astype(np.float64).T
        folded, bias, probe = self._fold(raw, weight, gamma, axes=(0,))
        w = self.const(f"{name}.weight", folded)
        b = self.const(f"{name}.bias", bias)
        return self._node("Gemm", [x, w, b], name, probe, transB=1)

    # -- layers without weights ----------------------------------------------------------------------

    def relu(self, x: str) -> str:
        return self._node("Relu", [x], f"{x}.relu", np.maximum(self._p(x), 0.0))

    def sigmoid(self, x: str) -> str:
        p = self.probe[x]
        return self._node("Sigmoid", [x], f"{x}.sigmoid", None if p is None else _sigmoid(p))

    def silu(self, x: str) -> str:
        """x * sigmoid(x): SiLU has no ONNX operator at our opset; torch exports it as this pair too."""
        return self._node("Mul", [x, self.sigmoid(x)], f"{x}.silu", self._p(x) * _sigmoid(self._p(x)))

    def maxpool(self, x: str, kernel: int, stride: int, pad: int) -> str:
        padded = np.pad(self._p(x), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
        windows = sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
        return self._node(
            "MaxPool", [x], f"{x}.maxpool", windows.max(axis=(4, 5)),
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
        )

    def add(self, a: str, b: str, *, name: str) -> str:
        return self._node("Add", [a, b], name, self._p(a) + self._p(b))

    def concat(self, xs: Sequence[str], axis: int, *, name: str) -> str:
        probes = [self.probe[x] for x in xs]
        parts = [p for p in probes if p is not None]
        probe = np.concatenate(parts, axis=axis) if len(parts) == len(probes) else None
        return self._node("Concat", list(xs), name, probe, axis=axis)

    def global_average_pool(self, x: str) -> str:
        return self._node("GlobalAveragePool", [x], f"{x}.gap", self._p(x).mean(axis=(2, 3), keepdims=True))

    def flatten(self, x: str) -> str:
        p = self._p(x)
        return self._node("Flatten", [x], f"{x}.flatten", p.reshape(p.shape[0], -1), axis=1)

    def upsample(self, x: str, factor: int, *, name: str) -> str:
        """Nearest-neighbour upsampling of the spatial axes (the YOLOv5 neck's nn.Upsample)."""
        scales = self.const(f"{name}.scales", np.asarray([1, 1, factor, factor], dtype=np.float32))
        probe = self._p(x).repeat(factor, axis=2).repeat(factor, axis=3)
        return self._node("Resize", [x, "", scales], name, probe, mode="nearest")

    # Shape plumbing after the last weighted layer: no probe is kept past these.

    def reshape(self, x: str, shape: Sequence[int], *, name: str) -> str:
        """Reshape where 0 copies the input's dimension (so a dynamic batch passes through) and -1 infers."""
        target = self.const(f"{name}.shape", np.asarray(shape, dtype=np.int64))
        return self._node("Reshape", [x, target], name, None)

    def transpose(self, x: str, perm: Sequence[int], *, name: str) -> str:
        return self._node("Transpose", [x], name, None, perm=list(perm))

    def resize(self, x: str, height: int, width: int, *, name: str) -> str:
        """Bilinear resize of the spatial axes to a fixed size; batch and channels pass through."""
        sizes = self.const(f"{name}.sizes", np.asarray([height, width], dtype=np.int64))
        return self._node("Resize", [x, "", "", sizes], name, None, mode="linear", axes=[2, 3])

    # -- result --------------------------------------------------------------------------------------

    def model(self, doc: str) -> onnx.ModelProto:
        """The finished model (the builder's own proto: build one model per builder)."""
        model, self.probe = self._model, {}
        model.ir_version = IR_VERSION
        model.producer_name = "mlserver_ipa.zoo"
        model.doc_string = doc
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.graph.name = self.name
        model.graph.doc_string = doc
        return model


PROBE_SEED = 20240101  # the calibration images are the same for every variant, drawn apart from any weights
PROBE_BATCH = 2  # each layer's scale pools all its channels and pixels, so two images are plenty


def probe_images(resolution: int) -> np.ndarray:
    """The calibration batch: standard-normal images, as a normalised input pipeline would give."""
    return np.random.default_rng(PROBE_SEED).standard_normal((PROBE_BATCH, 3, resolution, resolution))
