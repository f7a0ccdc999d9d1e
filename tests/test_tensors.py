"""Decoding V2 inputs for the model: chained stages (Seldon forwards a stage's outputs under their own names)."""

from __future__ import annotations

import numpy as np
import pytest
from mlserver.types import RequestInput

from mlserver_ipa.errors import InvalidInput
from mlserver_ipa.session import TensorSpec
from mlserver_ipa.tensors import decode_inputs

IMAGE = TensorSpec(name="input", dtype=np.dtype("float32"), datatype="FP32", shape=(None, 3, 4, 4))


def tensor(name: str, shape: list[int]) -> RequestInput:
    return RequestInput(name=name, datatype="FP32", shape=shape, data=[0.5] * int(np.prod(shape)))


def test_upstream_output_is_taken_as_the_input_and_its_other_outputs_ignored() -> None:
    upstream = [tensor("detections", [1, 7, 85]), tensor("output", [1, 3, 4, 4])]
    feeds, rows = decode_inputs(upstream, [IMAGE], max_rows=8, chain_input="output")
    assert rows == 1 and list(feeds) == ["input"] and feeds["input"].shape == (1, 3, 4, 4)


def test_without_chaining_an_upstream_tensor_is_an_unknown_input() -> None:
    with pytest.raises(InvalidInput, match="unknown input 'output'"):
        decode_inputs([tensor("output", [1, 3, 4, 4])], [IMAGE], max_rows=8, chain_input=None)


def test_a_direct_input_wins_over_the_chained_one() -> None:
    with pytest.raises(InvalidInput, match="unknown input 'output'"):
        decode_inputs([tensor("input", [1, 3, 4, 4]), tensor("output", [1, 3, 4, 4])], [IMAGE], 8, "output")
