"""Profiles of this machine: the demo plans with a profile a spot check on this machine (a real replica in a real
CPU cgroup) agrees with, the graph's or one shipped for another machine, else measures the stage here at the
cores the budget allows; a second run measures nothing."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

from adapter.decision.policies import decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext
from adapter.live.demo import DemoSettings, this_machines_profiles
from adapter.profiling.machine_profiles import (
    SHIPPED_FOLDER,
    candidates,
    compare,
    grid_cores,
    label_folder,
    local_profile,
    plan_with_this_machine,
    spot_points,
    this_machine,
)
from adapter.profiling.profile import Profile, ProfilePoint
from adapter.profiling.profiler import ProfilerSettings
from adapter.profiling.switch_profile import FILE_NAME as SWITCH_FILE
from adapter.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "build" / "models"  # `make models` builds the demo families there; built here if missing
FAST = ProfilerSettings(duration_s=1.0, warmup_s=0.5, min_batches=2, max_extend=3.0)
ELSEWHERE = "elsewhere-2c:cgroup-v1"


def foreign_graph(tmp_path: Path, speedup: float = 1.0) -> Path:
    """A one-variant graph whose profile (the shipped ResNet-18 rows, their throughput times `speedup`) says it
    was measured elsewhere, with a switch profile beside it."""
    shipped = [{**r, "throughput_rps": f"{float(r['throughput_rps']) * speedup:.2f}"}
               for r in csv.DictReader((ROOT / "profiles" / "resnet.csv").open())]
    folder = tmp_path / "profiles"
    folder.mkdir()
    with (folder / "resnet.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(shipped[0]))
        w.writeheader()
        w.writerows({**r, "machine": ELSEWHERE} for r in shipped if r["variant"] == "resnet18")
    (folder / SWITCH_FILE).write_text((ROOT / "profiles" / SWITCH_FILE).read_text())
    path = tmp_path / "graph.yaml"
    path.write_text(textwrap.dedent("""\
        name: tiny
        slo_ms: 500
        budget_cores: 0.5
        stages:
          - name: classifier
            family: resnet
            variants: [{name: resnet18, accuracy: 69.76}]
            batch_sizes: [1]
            cores: [0.25, 0.5, 1, 2]
            profile: profiles/resnet.csv
        """))
    return path


def test_where_profiles_are_looked_for_and_kept(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "inference_graphs" / "resnet.yaml")
    stage = spec.stages[0]
    found = candidates(spec, stage, "other-cpu-2c:cgroup-v2")
    assert found[0] == spec.profile_path(stage)
    assert all(p.parent.parent.name == SHIPPED_FOLDER and p.name == "resnet.csv" for p in found[1:])
    # a profile labelled with this machine's label is checked first
    assert candidates(spec, stage, "intel-xeon-2c:cgroup-v1")[0] == spec.profile_path(stage)
    amd = candidates(spec, stage, "amd-epyc-2c:cgroup-v1")
    assert amd[0].parent.name == "amd-epyc-2c_cgroup-v1" and spec.profile_path(stage) in amd
    path = local_profile(tmp_path, "amd-epyc-2c:cgroup-v1", spec, stage)
    assert path == tmp_path / "amd-epyc-2c_cgroup-v1" / "resnet.csv"
    # only the cores a decision can take within the budget are measured
    assert grid_cores(stage, 1.0) == [0.25, 0.5, 0.75, 1]
    assert grid_cores(stage, 0.1) == [0.25]  # one replica of the smallest size, never nothing
    # the spot check: the fastest and the slowest variant at batch 1 on the largest core choice in budget
    assert spot_points(stage, 1.0) == (["resnet18", "resnet152"], 1, 1)


def test_a_spot_check_compares_throughput_point_by_point(tmp_path: Path) -> None:
    def point(variant: str, rps: float) -> ProfilePoint:
        return ProfilePoint("s", variant, 1, 1.0, 10.0, 20.0, 12.0, rps, 100, "here")

    measured = Profile()
    for p in (point("a", 100.0), point("b", 20.0)):
        measured.add(p)
    for name, rows, fits in [("close", [point("a", 92.0), point("b", 21.0)], True),   # +9 %, -5 %
                             ("fast", [point("a", 100.0), point("b", 25.0)], False),  # b: -20 %
                             ("partial", [point("a", 100.0)], False)]:                # b not profiled
        prof = Profile()
        for p in rows:
            prof.add(p)
        prof.save(tmp_path / f"{name}.csv")
        check = compare(measured, tmp_path / f"{name}.csv")
        assert check.fits() is fits, (name, check.ratios)
    assert compare(measured, tmp_path / "fast.csv").ratios == {"a b1 1 core": 1.0, "b b1 1 core": 0.8}
    assert "b b1 1 core not profiled" in compare(measured, tmp_path / "partial.csv").describe()


async def test_a_profile_this_machine_does_not_match_is_measured_here_once(tmp_path: Path) -> None:
    """A graph profile five times too fast fails the spot check and the stage is measured here; the profile
    measured here, shipped as another machine's, then passes it and is planned with unmeasured; a second run
    checks nothing. The tolerance is wide (60 %) so that a loaded machine's noise cannot flip the verdicts."""
    spec = load_spec(foreign_graph(tmp_path, speedup=5.0), require_profiles=True)
    machine = this_machine()
    said: list[str] = []
    root = tmp_path / "here"
    local = await plan_with_this_machine(spec, "auto", root=root, models_dir=MODELS, settings=FAST,
                                         say=said.append, progress=False, tolerance=0.6)
    path = Path(local.stages[0].profile)
    assert path == local_profile(root, machine, spec, spec.stages[0]).resolve()
    prof = Profile.load(path)
    assert prof.machines() == [machine]
    assert {(p.variant, p.batch, p.cores) for p in prof.points} == {("resnet18", 1, 0.25), ("resnet18", 1, 0.5)}
    assert (path.parent / SWITCH_FILE).read_text() == (tmp_path / "profiles" / SWITCH_FILE).read_text()
    assert len(said) == 1 and "none is within 60%" in said[0] and "resnet18 b1 0.5 cores" in said[0]
    # the adapter plans with this machine's profile: a decision within the budget
    decision, _ = decide(PolicyContext(now=0.0, predicted_load_rps=2.0), PolicyConfig.create(local))
    assert decision.status == "optimal" and decision.cores <= 0.5

    # shipped for "another" machine, the profile measured here is the one a fresh root plans with
    seed = tmp_path / "profiles" / SHIPPED_FOLDER / label_folder(ELSEWHERE) / "resnet.csv"
    seed.parent.mkdir(parents=True)
    seed.write_text(path.read_text())
    fresh = tmp_path / "fresh"
    said.clear()
    chosen = await plan_with_this_machine(spec, "auto", root=fresh, models_dir=MODELS, settings=FAST,
                                          say=said.append, progress=False, tolerance=0.6)
    chosen_path = Path(chosen.stages[0].profile)
    assert chosen_path == local_profile(fresh, machine, spec, spec.stages[0]).resolve()
    assert chosen_path.read_text() == seed.read_text()  # nothing measured beyond the spot check
    assert len(said) == 1 and f"planning with {seed}" in said[0]

    # a graph whose own profile agrees is planned with as it is
    (tmp_path / "profiles" / "resnet.csv").write_text(path.read_text())
    said.clear()
    same = await plan_with_this_machine(spec, "auto", root=tmp_path / "third", models_dir=MODELS, settings=FAST,
                                        say=said.append, progress=False, tolerance=0.6)
    assert same == spec and len(said) == 1 and said[0].endswith("planning with the graph's profile")
    assert not (tmp_path / "third").exists()

    # a second demo: this machine's profile is kept, nothing is checked or measured; `shipped` keeps the graph's
    said.clear()
    settings = DemoSettings(profiles="auto", profiles_root=fresh, models=MODELS)
    again = await this_machines_profiles(spec, settings, said.append)
    assert again.stages[0].profile == str(chosen_path) and chosen_path.read_text() == seed.read_text()
    assert said == []
    shipped = await this_machines_profiles(spec, DemoSettings(profiles="shipped"), said.append)
    assert shipped == spec and said == []


@pytest.mark.parametrize("choice", ["auto", "here", "shipped"])
def test_demo_command_takes_the_choice(choice: str) -> None:
    from adapter.cli import build_parser

    args = build_parser().parse_args(["demo", "--profiles", choice])
    assert args.profiles == choice
