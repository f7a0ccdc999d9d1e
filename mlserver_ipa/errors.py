"""Errors the variant runtime answers with, each carrying its HTTP status (MLServer renders them as
`{"error": "..."}`, the V2 error shape, and maps them to gRPC codes).

    mlserver.errors.MLServerError
    └── RuntimeError_ (not raised itself)
        ├── InvalidInput         400  the request does not fit the model (name, dtype, shape, parameters)
        ├── RequestTooLarge      413  more rows than `max_request_rows`: split it and retry
        ├── Unauthorized         401  a control change without the pipeline's token, or with another one
        ├── WritesDisabled       403  a control change on a server started without a token
        ├── InvalidControl       422  a control body that cannot be applied (unknown variant, batch 0, ...)
        ├── Overloaded           503  the queue is full: retry later or elsewhere
        ├── DeadlineUnmeetable   504  the deadline cannot be met here: do not retry here
        └── ExecutionFailed      500  onnxruntime failed on a request the checks let through
"""

from __future__ import annotations

from mlserver.errors import MLServerError


class RuntimeError_(MLServerError):
    """Base of this runtime's errors (the trailing underscore keeps Python's `RuntimeError` visible)."""

    status = 500

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_code=self.status)


class InvalidInput(RuntimeError_):
    status = 400


class RequestTooLarge(RuntimeError_):
    status = 413


class Unauthorized(RuntimeError_):
    status = 401


class WritesDisabled(RuntimeError_):
    status = 403


class InvalidControl(RuntimeError_):
    status = 422


class Overloaded(RuntimeError_):
    status = 503


class DeadlineUnmeetable(RuntimeError_):
    status = 504


class ExecutionFailed(RuntimeError_):
    status = 500
