"""The onnxruntime session options every served model uses: its intra-op threads, and no busy-waiting.

Shared by the ONNX variants (`session`) and the ONNX exports of the text encoders (`onnx_encoder`).
"""

from __future__ import annotations

import onnxruntime as ort


def session_options(threads: int) -> ort.SessionOptions:
    """Options used for every session: `threads` intra-op threads and no busy-waiting.

    Spinning worker threads would burn the replica's CPU quota while the queue is empty, and with several
    replicas on one machine they would steal cycles from each other.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
