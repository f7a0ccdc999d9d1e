"""The V2 description of a model input or output (`TensorSpec`), and the element types the runtime serves.

Shared by the ONNX sessions (`session`) and the checkpoint-folder sessions (`transformers_session`); text is an
object array of `str` (`BYTES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# onnxruntime type strings -> numpy dtypes and V2 datatypes (`session` reads ONNX graphs with it).
ORT_TYPES: dict[str, tuple[np.dtype, str]] = {
    "tensor(float)": (np.dtype(np.float32), "FP32"),
    "tensor(double)": (np.dtype(np.float64), "FP64"),
    "tensor(float16)": (np.dtype(np.float16), "FP16"),
    "tensor(int8)": (np.dtype(np.int8), "INT8"),
    "tensor(int16)": (np.dtype(np.int16), "INT16"),
    "tensor(int32)": (np.dtype(np.int32), "INT32"),
    "tensor(int64)": (np.dtype(np.int64), "INT64"),
    "tensor(uint8)": (np.dtype(np.uint8), "UINT8"),
    "tensor(uint16)": (np.dtype(np.uint16), "UINT16"),
    "tensor(uint32)": (np.dtype(np.uint32), "UINT32"),
    "tensor(uint64)": (np.dtype(np.uint64), "UINT64"),
    "tensor(bool)": (np.dtype(np.bool_), "BOOL"),
}


V2_DATATYPES: dict[np.dtype, str] = {dtype: datatype for dtype, datatype in ORT_TYPES.values()}
V2_DATATYPES[np.dtype(object)] = "BYTES"
"""numpy dtype -> V2 datatype, for the types onnxruntime returns (and text, as object arrays of str)."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, element type and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    datatype: str
    """The V2 datatype (FP32, INT64, ...)."""
    shape: tuple[int | None, ...]

    def signature(self) -> tuple[str, str, tuple[int | None, ...]]:
        """What must match for requests queued for one variant to be served by another."""
        return (self.name, self.datatype, self.shape[1:])


Signature = tuple[tuple[tuple[str, str, tuple[int | None, ...]], ...], ...]


def signature_of(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Signature:
    """A session's inputs and outputs as requests see them: sessions with equal signatures can serve each other's
    queue (every session kind answers this from its specs)."""
    return (tuple(s.signature() for s in inputs), tuple(s.signature() for s in outputs))


def spec_of(name: str, datatype: str, shape: tuple[int, ...]) -> TensorSpec:
    """A TensorSpec from a V2 datatype and a shape with -1 for dynamic dimensions."""
    dtype = next((d for d, t in V2_DATATYPES.items() if t == datatype), None)
    if dtype is None:
        raise ValueError(f"{name}: unsupported datatype {datatype}")
    return TensorSpec(name, dtype, datatype, tuple(d if d > 0 else None for d in shape))
