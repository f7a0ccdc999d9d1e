"""What a V2 request's parameters and a control body say, parsed strictly (the runtime's boundary).

    parse_slo(parameters)          the request's deadline (relative or absolute) and priority; 400 when malformed
    string_parameters(parameters)  the string parameters echoed to the next stage (a QA stage's question)
    parse_control(body)            a control POST as a `ControlRequest`; 422 naming the field, finite numbers only

Kept out of `runtime`, which MLServer re-imports for every model it loads (nothing but the class lives there).
"""

from __future__ import annotations

import json

from mlserver.types import Parameters
from pydantic import ValidationError

from mlserver_ipa.errors import InvalidControl, InvalidInput
from mlserver_ipa.settings import ControlRequest, RequestSLO, describe_validation_error


def parse_slo(parameters: Parameters | None) -> RequestSLO:
    if parameters is None:
        return RequestSLO()
    try:
        return RequestSLO.model_validate(parameters.model_dump(include={"deadline_ms", "deadline_at_ms", "priority"}))
    except ValidationError as e:
        raise InvalidInput(f"parameters: {describe_validation_error(e)}") from e


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


OWN_PARAMETERS = {"deadline_ms", "priority", "variant", "batch_size", "batch_id", "queue_ms", "service_ms",
                  "content_type", "headers"}


def string_parameters(parameters: Parameters | None) -> dict[str, str]:
    """The request's string parameters other than the runtime's own: echoed, and text inputs by name."""
    if parameters is None:
        return {}
    data = parameters.model_dump(exclude_none=True)
    return {k: v for k, v in data.items() if isinstance(v, str) and k not in OWN_PARAMETERS}


def parse_control(body: bytes) -> ControlRequest:
    try:
        data = json.loads(body or b"{}", parse_constant=_refuse_constant)
    except ValueError as e:
        raise InvalidControl(f"control body is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidControl("control body must be a JSON object")
    try:
        return ControlRequest.model_validate(data)
    except ValidationError as e:
        raise InvalidControl(describe_validation_error(e)) from e
