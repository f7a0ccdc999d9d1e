"""Text in V2 tensors: `BYTES` tensors of UTF-8 strings, one per row, decoded and encoded here.

JSON requests carry a `BYTES` tensor's data as a list of strings; gRPC's raw contents carry each element as a
4-byte little-endian length and its bytes. Either becomes a numpy object array of `str` of the tensor's shape;
an element that is not text, not UTF-8, or empty is an `InvalidInput` naming the tensor and the row.
`length_buckets` splits a batch of token lengths so that padding to the longest of each part stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlserver_ipa.errors import InvalidInput
from mlserver_ipa.wire_tensors import split_bytes


def decode_text(name: str, data: object, shape: Sequence[int]) -> np.ndarray:
    """The strings of tensor `name` as an object array of `shape`."""
    if isinstance(data, bytes | bytearray | memoryview):
        items: list[object] = _split_raw(name, bytes(data))
    elif isinstance(data, list | tuple):
        items = list(_flatten(data))
    elif isinstance(data, str):
        items = [data]
    else:
        raise InvalidInput(f"input {name!r}: BYTES data must be a list of strings, got {type(data).__name__}")
    need = int(np.prod(shape)) if len(shape) else 1
    if len(items) != need:
        raise InvalidInput(f"input {name!r} has {len(items)} strings; shape {list(shape)} needs {need}")
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        if isinstance(item, bytes | bytearray):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(f"input {name!r} row {i}: not UTF-8 text ({e.reason})") from e
        if not isinstance(item, str):
            raise InvalidInput(f"input {name!r} row {i}: expected a string, got {type(item).__name__}")
        if not item.strip():
            raise InvalidInput(f"input {name!r} row {i}: the text is empty")
        out[i] = item
    return out.reshape(tuple(shape))


def encode_text(array: np.ndarray) -> list[str]:
    """The V2 JSON data of a `BYTES` output: its strings, flattened."""
    return [s if isinstance(s, str) else bytes(s).decode("utf-8", "replace") for s in array.ravel().tolist()]


def length_buckets(lengths: Sequence[int], ratio: float = 2.0) -> list[list[int]]:
    """Row indices grouped by length, shortest first, so that no group's longest row is more than `ratio` times
    its shortest: a batch of 8 short questions and one long document is run as two calls, not one call that
    pads every short row to the document's length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= ratio * max(1, lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _flatten(data: Sequence[object]) -> list[object]:
    out: list[object] = []
    for item in data:
        if isinstance(item, list | tuple):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _split_raw(name: str, raw: bytes) -> list[object]:
    try:
        return list(split_bytes(name, raw))
    except ValueError as e:
        raise InvalidInput(str(e)) from None
