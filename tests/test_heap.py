"""The serving processes' heap (`mlserver_ipa.heap`) and the compact form requests wait in (`wire_tensors`)."""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mlserver_ipa.heap import YOUNG_EVERY, GcPauses, freeze_startup_heap
from mlserver_ipa.wire_tensors import compact, listed


def test_frozen_objects_are_left_out_of_collections() -> None:
    kept = [[i] for i in range(1000)]  # tracked containers made "at start-up"
    threshold = gc.get_threshold()
    try:
        frozen = freeze_startup_heap()
        assert gc.get_threshold() == (YOUNG_EVERY, *threshold[1:])
        assert frozen >= len(kept) and gc.get_freeze_count() == frozen
        walked = {id(o) for o in gc.get_objects()}  # what collections walk: the permanent generation is not in it
        assert not any(id(x) in walked for x in kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_gc_pauses_are_exported_by_generation() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.close()
    for generation in ("0", "2"):
        count = registry.get_sample_value("ipa_gc_pause_seconds_count", {"generation": generation})
        assert count is not None and count >= 1
    gc.collect()
    assert registry.get_sample_value("ipa_gc_pause_seconds_count", {"generation": "1"}) is None  # closed


def test_json_tensors_wait_raw_and_come_back_the_same() -> None:
    image = {"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "data": [[[0.5, 1.0], [2.0, -3.25]]]}
    text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", "world"], "parameters": {"a": 1}}
    small, words = compact([image, text])
    assert small["data"] == np.array([0.5, 1.0, 2.0, -3.25], dtype="<f4").tobytes()
    assert words["parameters"] == {"a": 1} and isinstance(words["data"], bytes)
    assert listed(small)["data"] == [0.5, 1.0, 2.0, -3.25] and listed(words)["data"] == ["héllo", "world"]
    assert compact([small]) == [small]  # what is raw already stays as it is


@pytest.mark.parametrize("tensor, reason", [
    ("input", "inputs[0] is not a V2 tensor"),
    ({"name": "input", "datatype": "FP32", "data": [1]}, "inputs[0] is not a V2 tensor"),
    ({"name": "input", "datatype": "INT8", "shape": [1], "data": [300]}, "not INT8"),
    ({"name": "input", "datatype": "BYTES", "shape": [1], "data": [1]}, "must be strings"),
    ({"name": "input", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}, "not valid UTF-8"),
])
def test_a_tensor_that_cannot_be_made_raw_is_named(tensor: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        compact([tensor])
