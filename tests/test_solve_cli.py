"""`ipa solve`: the decision as a table or DESIGN.md §3 JSON; bad arguments end with one line and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.decision.model import Decision

ROOT = Path(__file__).resolve().parent.parent
RESNET = str(ROOT / "inference_graphs" / "resnet.yaml")
VIDEO = str(ROOT / "inference_graphs" / "video-monitoring.yaml")


def solve_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["solve", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    out = solve_json(capsys, RESNET, "--load", "30")
    assert out["status"] == "optimal"
    assert set(out["objective"]) >= {"value", "accuracy", "cores", "batch"}
    for key in ("solve_time_ms", "predicted_latency_ms", "load_rps", "stages", "policy"):
        assert key in out
    assert out["load_rps"] == 30.0
    stage = out["stages"][0]
    assert stage["name"] == "classifier"
    assert set(stage["replicas"][0]) == {"variant", "batch", "cores", "count", "load_share"}
    Decision.model_validate(out)  # the JSON reads back as a Decision


def test_table_names_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", VIDEO, "--load", "10"]) == 0
    out = capsys.readouterr().out
    assert "video-monitoring: policy joint" in out
    assert "stage" in out and "variant" in out and "replicas" in out
    assert "detector" in out and "classifier" in out


def test_both_solvers_give_the_same_objective(capsys: pytest.CaptureFixture[str]) -> None:
    exact = solve_json(capsys, VIDEO, "--load", "15", "--solver", "exact")
    cbc = solve_json(capsys, VIDEO, "--load", "15", "--solver", "mip")
    assert math.isclose(exact["objective"]["value"], cbc["objective"]["value"], rel_tol=1e-9, abs_tol=1e-9)
    assert exact["solver"] == "exact" and cbc["solver"] == "mip"


def test_overrides_reach_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    out = solve_json(
        capsys, RESNET, "--load", "10", "--slo-ms", "120", "--alpha", "1", "--beta", "0", "--delta", "0"
    )
    assert out["slo_ms"] == 120.0
    assert out["predicted_latency_ms"] <= 120.0
    assert math.isclose(out["objective"]["value"], out["objective"]["accuracy"])


def test_policies_are_selectable(capsys: pytest.CaptureFixture[str]) -> None:
    for policy in ("infadapter", "fa2-low", "static", "sponge"):
        out = solve_json(capsys, RESNET, "--load", "20", "--policy", policy)
        assert out["policy"] == policy


def test_infeasible_slo_is_a_degraded_decision_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = solve_json(capsys, RESNET, "--load", "20", "--slo-ms", "1")
    assert out["status"] == "degraded"
    assert "SLO" in out["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--load", "-5"], "--load must be a number >= 0"),
        (["--load", "lots"], "--load must be a number"),
        (["--load", "5", "--policy", "magic"], "unknown policy 'magic'"),
        (["--load", "5", "--solver", "gurobi"], "unknown solver 'gurobi'"),
        (["--load", "5", "--slo-ms", "0"], "--slo-ms must be a number > 0"),
        (["--load", "5", "--time-limit", "0"], "--time-limit must be a number > 0"),
        (["--load", "5", "--beta", "-1"], "--beta must be a number >= 0"),
    ],
)
def test_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["solve", RESNET, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bad_spec_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nslo_ms: -1\n")
    assert main(["solve", str(bad), "--load", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml" in err
