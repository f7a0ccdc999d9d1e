"""Checks and measurements of a built model: ONNX validity, one real run, and batch-1 latency.

Every model the zoo writes passes `verify_model` first: onnx.checker (with shape inference), then one run in
onnxruntime at batch 2 (so a batch dimension fixed by mistake shows) whose outputs must have the family's
names, shapes and dtype and be finite.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from mlserver_ipa.zoo.families import TensorSpec

CHECK_BATCH = 2


class ModelCheckError(ValueError):
    """A built model failed its check: a bug in the builder, never the user's input."""


def session_options(threads: int = 1) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def verify_model(model: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Raise ModelCheckError unless the serialized `model` is valid ONNX and runs to the expected outputs."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelCheckError(f"onnx.checker: {e}") from e
    session = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        spec.name: rng.standard_normal((CHECK_BATCH, *spec.shape[1:])).astype(np.float32) for spec in inputs
    }
    results = session.run([spec.name for spec in outputs], feed)
    for spec, result in zip(outputs, results, strict=True):
        expected = (CHECK_BATCH, *spec.shape[1:])
        if result.shape != expected or result.dtype != np.float32:
            raise ModelCheckError(f"output {spec.name}: {result.dtype}{list(result.shape)}, expected float32{list(expected)}")
        if not np.isfinite(result).all():
            raise ModelCheckError(f"output {spec.name}: not finite")


def measure_latency(path: Path, inputs: Sequence[TensorSpec], runs: int = 10, threads: int = 1) -> float:
    """Median wall time (ms) of one batch-1 inference of the model at `path` on `threads` threads.

    A measurement for people to read (the CLI prints it); profiles come from the profiler, not from here.
    """
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {spec.name: rng.standard_normal((1, *spec.shape[1:])).astype(np.float32) for spec in inputs}
    for _ in range(2):  # warm-up: first runs allocate arenas and pick kernels
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)
