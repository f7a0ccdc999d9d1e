"""V2 tensors to numpy and back, checked against the model's signature.

Every way a request can fail to fit the model (missing or unknown input, wrong datatype, wrong shape, data that
does not match its shape or type, a floating-point value that is not finite (NaN, ±Infinity, or out of the
type's range, such as 1e39 as FP32), too many rows) becomes an `InvalidInput` (400) or `RequestTooLarge` (413)
that says what was sent and what the model expects, before the request reaches a queue or onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from mlserver.types import RequestInput, RequestOutput, ResponseOutput

from mlserver_ipa.errors import InvalidInput, RequestTooLarge
from mlserver_ipa.session import V2_DATATYPES, TensorSpec
from mlserver_ipa.text import decode_text, encode_text


def describe(spec: TensorSpec) -> str:
    """`input FP32 [-1,3,64,64]`, -1 for a dynamic dimension."""
    dims = ",".join("-1" if d is None else str(d) for d in spec.shape)
    return f"{spec.name} {spec.datatype} [{dims}]"


def decode_inputs(
    inputs: Sequence[RequestInput], specs: Sequence[TensorSpec], max_rows: int, chain_input: str | None = None,
    text_parameters: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The feeds for the session and the number of rows (first dimension) the request carries.

    `chain_input` names the tensor an upstream pipeline stage passes on (see `RuntimeSettings.chain_input`); it
    feeds the model's first input when that one is absent. A text (`BYTES`) input other than the first that the
    request does not carry is taken from `text_parameters` (the request's string parameters) when it is there,
    the same text for every row: a pipeline's later stage gets it so (a QA stage's `question`).
    """
    takes = "; the model takes " + ", ".join(describe(s) for s in specs)
    given: dict[str, RequestInput] = {}
    for tensor in inputs:
        if tensor.name in given:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        given[tensor.name] = tensor
    if chain_input and specs[0].name not in given and chain_input in given:
        chained = given[chain_input]
        given = {name: t for name, t in given.items() if name in {s.name for s in specs[1:]}}
        given[specs[0].name] = chained
    from_parameters = {
        s.name: text_parameters[s.name] for s in specs[1:]
        if s.datatype == "BYTES" and s.name not in given and text_parameters and s.name in text_parameters
    }
    unknown = sorted(set(given) - {s.name for s in specs})
    if unknown:
        raise InvalidInput(f"unknown input {', '.join(map(repr, unknown))}{takes}")
    feeds: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in specs:
        tensor = given.get(spec.name)
        if tensor is None and spec.name in from_parameters:
            continue
        if tensor is None:
            raise InvalidInput(f"missing input {spec.name!r}{takes}")
        datatype = getattr(tensor.datatype, "value", tensor.datatype)
        if datatype != spec.datatype:
            raise InvalidInput(f"input {spec.name!r} has datatype {datatype}; the model expects {spec.datatype}")
        shape = list(tensor.shape)
        fits = len(shape) == len(spec.shape) and all(
            d >= 0 and (want is None or d == want) for d, want in zip(shape, spec.shape, strict=False)
        )
        if not fits:
            raise InvalidInput(f"input {spec.name!r} has shape {shape}; the model expects {describe(spec)}")
        if shape[0] < 1:
            raise InvalidInput(f"input {spec.name!r} has no rows (shape {shape})")
        if shape[0] > max_rows:
            raise RequestTooLarge(
                f"input {spec.name!r} has {shape[0]} rows; this model takes at most {max_rows} rows per request:"
                " split it"
            )
        if rows is not None and shape[0] != rows:
            raise InvalidInput(f"inputs disagree on the number of rows ({rows} and {shape[0]})")
        rows = shape[0]
        feeds[spec.name] = _to_array(tensor, spec, shape)
    assert rows is not None  # a model has at least one input
    for name, text in from_parameters.items():
        feeds[name] = decode_text(f"parameters.{name}", [text] * rows, [rows])
    return feeds, rows


def _to_array(tensor: RequestInput, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    data = getattr(tensor.data, "root", tensor.data)
    if spec.datatype == "BYTES":
        return decode_text(spec.name, data, shape)
    try:
        if isinstance(data, bytes):  # raw contents (gRPC)
            array = np.frombuffer(data, dtype=spec.dtype)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are refused below
                array = np.asarray(data, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {spec.name!r}: data is not {spec.datatype}: {e}") from e
    need = math.prod(shape)
    if array.size != need:
        raise InvalidInput(f"input {spec.name!r} has {array.size} values; shape {shape} needs {need}")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            at = int(np.argmin(finite))
            raise InvalidInput(f"input {spec.name!r}: value {at} is {float(array.flat[at])} as {spec.datatype}; "
                               "only finite numbers in the type's range are accepted")
    return array.reshape(shape)


def requested_outputs(requested: Sequence[RequestOutput] | None, specs: Sequence[TensorSpec]) -> list[str]:
    """Names of the outputs to answer: those the request asks for, or all."""
    names = [s.name for s in specs]
    if not requested:
        return names
    unknown = sorted({r.name for r in requested} - set(names))
    if unknown:
        raise InvalidInput(f"unknown output {', '.join(map(repr, unknown))}; the model has {', '.join(names)}")
    return [r.name for r in requested]


def came_raw(inputs: Sequence[RequestInput]) -> bool:
    """Whether a request's tensors came as raw contents (gRPC): its answer goes back so too."""
    return any(isinstance(getattr(t.data, "root", t.data), bytes) for t in inputs)


def encode_outputs(arrays: Mapping[str, np.ndarray], names: Sequence[str], raw: bool = False) -> list[ResponseOutput]:
    """The response tensors: data as JSON lists, or with `raw` numeric tensors as their bytes (gRPC's raw
    contents; never a Python list in between)."""
    return [
        ResponseOutput(
            name=name,
            datatype=V2_DATATYPES[arrays[name].dtype],
            shape=list(arrays[name].shape),
            data=encode_text(arrays[name]) if arrays[name].dtype == object
            else np.ascontiguousarray(arrays[name]).tobytes() if raw else arrays[name].ravel().tolist(),
        )
        for name in names
    ]
