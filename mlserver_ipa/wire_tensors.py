"""V2 tensors in their two wire forms, and the move between them: JSON `data` lists (REST) and gRPC raw
contents (`raw_input_contents` / `raw_output_contents`, the tensor's bytes, little-endian, row-major).

A tensor here is the JSON form's dict `{"name", "datatype", "shape", "data"}` whose `data` is either a (nested)
list or `bytes`, the raw contents. The router carries tensors so between hops: what came raw from a gRPC hop
goes on raw to the next gRPC hop without ever becoming numbers in Python, and is turned into a list only where
JSON needs one (`listed`). What a request brings as JSON lists is made raw as it arrives (`compact`): a request
waiting at the router then holds 4 bytes per FP32 value rather than a Python float and its pointer (40), and the
garbage collector, which walks every item of every list it tracks, has none of thousands of items to walk (under
a 3x burst the router's collections had taken 1.6 s of every 90 s walking the waiting requests' lists). `BYTES` tensors in raw
form are each element's 4-byte little-endian length and its bytes (as `mlserver_ipa.text` reads them).

    from_pb_inputs(request)        # the tensors of a ModelInferRequest (raw or typed contents), data as bytes
    fill_pb_inputs(request, tensors)
    from_pb_outputs(response); fill_pb_outputs(response, tensors)

A tensor that cannot be converted (unknown datatype, data that does not match it) raises `ValueError` naming it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""Numpy dtypes of the V2 numeric datatypes, in the raw contents' byte order."""
_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
             "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
"""The typed `contents` field of each datatype (what a gRPC client sends when it does not send raw)."""


def _flat(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def raw(tensor: dict[str, Any]) -> bytes:
    """The tensor's data as raw contents (its own bytes when it already is)."""
    data = tensor.get("data")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    kind = tensor.get("datatype")
    name = tensor.get("name")
    if kind == "BYTES":
        parts = []
        for item in _flat(data if data is not None else []):
            if isinstance(item, str):
                try:
                    item = item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"tensor {name!r}: a BYTES string is not valid UTF-8") from None
            if not isinstance(item, bytes | bytearray):
                raise ValueError(f"tensor {name!r}: BYTES data must be strings, got {type(item).__name__}")
            parts += [struct.pack("<I", len(item)), bytes(item)]
        return b"".join(parts)
    dtype = DTYPES.get(str(kind))
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unknown datatype {kind!r}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # the replica refuses values out of the type's range
            return np.asarray(data if data is not None else [], dtype=dtype).tobytes()
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"tensor {name!r}: data is not {kind}: {e}") from None


def compact(tensors: Iterable[Any]) -> list[dict[str, Any]]:
    """The tensors with their data as raw contents; `ValueError` naming the first that is not a V2 tensor."""
    out = []
    for i, t in enumerate(tensors):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("shape"), list):
            raise ValueError(f"inputs[{i}] is not a V2 tensor: expected an object with a `name`, a `datatype`, "
                             "a `shape` list and `data`")
        out.append({**t, "data": raw(t)})
    return out


def split_bytes(name: object, contents: bytes) -> list[bytes]:
    """The elements of a `BYTES` tensor's raw contents (each a 4-byte little-endian length and its bytes);
    `ValueError` naming the tensor when they do not add up."""
    items, offset = [], 0
    while offset < len(contents):
        if offset + 4 > len(contents):
            raise ValueError(f"input {name!r}: raw BYTES contents end inside a length prefix")
        (n,) = struct.unpack_from("<I", contents, offset)
        offset += 4
        if offset + n > len(contents):
            raise ValueError(f"input {name!r}: raw BYTES element of {n} bytes runs past the end")
        items.append(contents[offset:offset + n])
        offset += n
    return items


def listed(tensor: dict[str, Any]) -> dict[str, Any]:
    """The tensor with its data as a flat JSON list (itself when it already is one)."""
    data = tensor.get("data")
    if not isinstance(data, bytes | bytearray | memoryview):
        return tensor
    kind, name = tensor.get("datatype"), tensor.get("name")
    if kind == "BYTES":
        return {**tensor, "data": [b.decode("utf-8", "replace") for b in split_bytes(name, bytes(data))]}
    dtype = DTYPES.get(str(kind))
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unknown datatype {kind!r}")
    if len(data) % dtype.itemsize:
        raise ValueError(f"tensor {name!r}: {len(data)} bytes of raw contents are not whole {kind} values")
    return {**tensor, "data": np.frombuffer(data, dtype=dtype).tolist()}


def listed_all(tensors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [listed(t) for t in tensors]


def _typed(kind: str, contents: Any) -> bytes | list[Any]:
    field = _CONTENTS.get(kind)
    values = list(getattr(contents, field)) if field is not None else []
    return values


def from_pb_inputs(request: Any) -> list[dict[str, Any]]:
    """The input tensors of a `ModelInferRequest`: raw contents as bytes, typed contents as lists.

    `ValueError` when raw contents are given for some inputs and not all (the V2 protocol's rule)."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise ValueError(f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs: give one per input "
                         "or none")
    tensors = []
    for i, t in enumerate(request.inputs):
        data: bytes | list[Any] = raws[i] if raws else _typed(t.datatype, t.contents)
        tensors.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": data})
    return tensors


def fill_pb_inputs(request: Any, tensors: Sequence[dict[str, Any]]) -> None:
    """Add `tensors` to a `ModelInferRequest` as inputs with raw contents."""
    for t in tensors:
        request.inputs.add(name=str(t["name"]), datatype=str(t["datatype"]), shape=list(t["shape"]))
        request.raw_input_contents.append(raw(t))


def from_pb_outputs(response: Any) -> list[dict[str, Any]]:
    """The output tensors of a `ModelInferResponse`, data as bytes (raw) or lists (typed contents)."""
    raws = response.raw_output_contents
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
             "data": raws[i] if i < len(raws) else _typed(t.datatype, t.contents)}
            for i, t in enumerate(response.outputs)]


def fill_pb_outputs(response: Any, tensors: Sequence[dict[str, Any]], typed: bool = False) -> None:
    """Add `tensors` to a `ModelInferResponse` as outputs with raw contents, or with typed `contents` when
    `typed` (for a caller that reads only those: Seldon Core v1's executor chains a gRPC graph's nodes by
    copying each output's `contents` into the next request and drops `raw_output_contents`)."""
    for t in tensors:
        out = response.outputs.add(name=str(t["name"]), datatype=str(t["datatype"]), shape=list(t["shape"]))
        if not typed:
            response.raw_output_contents.append(raw(t))
            continue
        kind, field = str(t["datatype"]), _CONTENTS.get(str(t["datatype"]))
        if field is None:
            raise ValueError(f"tensor {t['name']!r}: {kind} has no typed contents (raw only)")
        data = raw(t)
        getattr(out.contents, field).extend(
            split_bytes(t["name"], data) if kind == "BYTES" else np.frombuffer(data, dtype=DTYPES[kind]).tolist())
