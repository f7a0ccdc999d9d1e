"""Profiles of this machine: the demo plans with a profile only once a spot check on this machine agrees with it.

A profile is a property of the machine it was measured on, and the `machine` label does not pin that down: the
shipped `profiles/resnet.csv`, measured on an Intel Xeon with 2 cores, says ResNet-34 at batch 1 on one core
serves 85.0 rps; with the same models, runtime and cgroup quota one AMD EPYC VM with 2 cores served 71.9 and
another, with the same label `amd-epyc-2c:cgroup-v1`, 48.5. A demo that plans with a profile 1.6-1.8x too
optimistic sizes its replicas for capacity they do not have: in the burst it dropped 17-20 % of requests where
the simulator, on the same profile, predicted 2-4 %.

So before the demo brings a pipeline up (`plan_with_this_machine`), each stage gets a **spot check**: its first
and last variant at batch 1 on the largest core choice the budget allows, measured here on a real replica in a
real CPU cgroup (about 20 s), against each candidate profile: the graph's and the ones shipped for other
machines under `machines/<label>/` beside it, those labelled with this machine's label first (the label is a
preference, the spot check the proof). The first whose throughput at both points is within `TOLERANCE` is
planned with. When none is, the stage is measured here at every core choice the budget allows, into
`<root>/<label>/` (resumable: a run stopped half-way goes on where it stopped). A profile already under
`<root>/<label>/` was measured on this host (or chosen by an earlier check) and is used without a check, so a
second demo measures nothing. The live adapter and the simulator then read the same profile.

The switch costs beside the graph's profile (`switch.csv`) are copied beside this machine's: they are measured
per family and scaled by the replica's cores (`adapter.decision.switching`), and re-measuring them takes longer
than the profile.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapter.executors.cgroups import detect_cpu_controller
from adapter.profiling.profile import Profile
from adapter.profiling.profiler import LIMIT_NAMES, ProfilerSettings, machine_label, profile_stage
from adapter.profiling.switch_profile import FILE_NAME as SWITCH_FILE
from adapter.spec import GraphSpec, StageSpec

Choice = Literal["auto", "here", "shipped"]
DEFAULT_ROOT = Path("build/profiles")
SHIPPED_FOLDER = "machines"
"""Beside a graph's profile: `machines/<label>/` holds that profile measured on another kind of machine."""
SETTINGS = ProfilerSettings(duration_s=3.0, warmup_s=1.0)
"""As `make profiles` measures the shipped ones."""
TOLERANCE = 0.15
"""How far a spot check's throughput may be from a profile's: two profiles of one machine measured an hour
apart differ by up to 8-12 % at these points (3 s windows); planning for 15 % more than a replica serves is an
overload the deadline queue sheds, where the 40-45 % of a slower machine is not."""


def this_machine() -> str:
    """This machine's profile label, e.g. `amd-epyc-2c:cgroup-v1`."""
    kind = detect_cpu_controller().kind
    return machine_label(LIMIT_NAMES.get(kind, kind))


def label_folder(machine: str) -> str:
    """A machine label as a folder name: `amd-epyc-2c:cgroup-v1` -> `amd-epyc-2c_cgroup-v1`."""
    return re.sub(r"[^a-z0-9.-]+", "_", machine.lower())


def local_profile(root: Path, machine: str, spec: GraphSpec, stage: StageSpec) -> Path:
    """Where `stage`'s profile measured on `machine` is kept: `<root>/<label>/<the shipped file's name>`."""
    return root / label_folder(machine) / spec.profile_path(stage).name


def candidates(spec: GraphSpec, stage: StageSpec, machine: str) -> list[Path]:
    """The profiles a spot check compares with, in order: those whose label is `machine`'s first, then the
    graph's before those shipped for other machines."""
    shipped = spec.profile_path(stage)
    found = [shipped, *sorted((shipped.parent / SHIPPED_FOLDER).glob(f"*/{shipped.name}"))]
    return sorted(found, key=lambda p: machine not in Profile.load(p).machines())


def grid_cores(stage: StageSpec, budget_cores: float) -> list[float]:
    """The stage's core choices that fit the budget: the only ones a decision can take."""
    return [c for c in stage.cores if c <= budget_cores + 1e-9] or [min(stage.cores)]


def minutes_to_measure(spec: GraphSpec, stages: list[StageSpec], settings: ProfilerSettings = SETTINGS) -> float:
    """About how long measuring `stages` here takes (points missing from a partial earlier run not counted)."""
    per_point = settings.warmup_s + settings.duration_s + 1.0
    points = sum(len(s.variants) * len(s.batch_sizes) * len(grid_cores(s, spec.budget_cores)) for s in stages)
    return points * per_point / 60


@dataclass(frozen=True)
class SpotCheck:
    """A stage's spot check against one candidate profile: measured / profiled throughput per point."""

    profile: Path
    ratios: dict[str, float | None]  # "resnet18 b1 1 core" -> ratio; None: the profile has no such point

    def fits(self, tolerance: float = TOLERANCE) -> bool:
        return all(r is not None and abs(r - 1.0) <= tolerance for r in self.ratios.values())

    def describe(self) -> str:
        shown = ", ".join(f"{k} {'not profiled' if r is None else f'{r - 1:+.0%}'}" for k, r in self.ratios.items())
        return f"{self.profile} ({shown})"


def spot_points(stage: StageSpec, budget_cores: float) -> tuple[list[str], int, float]:
    """The spot check's grid: the stage's first and last variant, batch 1, the largest core choice in budget."""
    names = list(dict.fromkeys([stage.variants[0].name, stage.variants[-1].name]))
    return names, 1, max(grid_cores(stage, budget_cores))


def compare(measured: Profile, profile: Path) -> SpotCheck:
    """The spot check of `profile` by the points in `measured`."""
    prof = Profile.load(profile)
    ratios: dict[str, float | None] = {}
    for p in measured.points:
        name = f"{p.variant} b{p.batch} {p.cores:g} core{'s' if p.cores != 1 else ''}"
        ratios[name] = p.throughput_rps / prof.point(p.variant, p.batch, p.cores).throughput_rps \
            if prof.has(p.variant, p.batch, p.cores) else None
    return SpotCheck(profile, ratios)


async def spot_check(spec: GraphSpec, stage: StageSpec, machine: str, into: Path, models_dir: Path,
                     settings: ProfilerSettings = SETTINGS) -> list[SpotCheck]:
    """Measure `stage`'s spot points here (on `machine`) into `into` and compare every candidate with them."""
    names, batch, cores = spot_points(stage, spec.budget_cores)
    measured = await profile_stage(spec, stage, into, names, [batch], [cores], settings, False, models_dir, False)
    return [compare(measured, c) for c in candidates(spec, stage, machine)]


async def measured_here(spec: GraphSpec, stage: StageSpec, path: Path, models_dir: Path,
                        settings: ProfilerSettings = SETTINGS, progress: bool = True) -> Path:
    """`stage`'s profile at `path`, its missing points measured here first, the switch costs copied beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    switch = spec.profile_path(stage).parent / SWITCH_FILE
    if switch.exists() and not (path.parent / SWITCH_FILE).exists():
        shutil.copyfile(switch, path.parent / SWITCH_FILE)
    await profile_stage(spec, stage, path, None, None, grid_cores(stage, spec.budget_cores), settings,
                        False, models_dir, progress)
    return path.resolve()


async def plan_with_this_machine(
    spec: GraphSpec,
    choice: Choice,
    *,
    root: Path = DEFAULT_ROOT,
    models_dir: Path = Path("build/models"),
    settings: ProfilerSettings = SETTINGS,
    say: Callable[[str], None] = print,
    progress: bool = True,
    tolerance: float = TOLERANCE,
) -> GraphSpec:
    """`spec` with each stage reading the profile `choice` asks for (module doc): `shipped`, the graph's as it
    is; `auto`, the first candidate a spot check agrees with, else measured here; `here`, measured here."""
    if choice == "shipped":
        return spec
    machine = this_machine()
    paths: dict[str, str] = {}
    for stage in spec.stages:
        local = local_profile(root, machine, spec, stage)
        if choice == "auto" and not local.exists():
            with tempfile.TemporaryDirectory(prefix="ipa-spot-") as tmp:
                spot = Path(tmp) / local.name
                checks = await spot_check(spec, stage, machine, spot, models_dir, settings)
                fit = next((c for c in checks if c.fits(tolerance)), None)
                said = f"{stage.name}: spot check on {machine}, measured / profiled throughput: " + \
                    "; ".join(c.describe() for c in checks)
                if fit is not None and fit.profile == spec.profile_path(stage):
                    say(f"{said}: planning with the graph's profile")
                    continue
                local.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fit.profile if fit is not None else spot, local)
                say(f"{said}: " + (f"planning with {fit.profile}" if fit is not None else
                    f"none is within {tolerance:.0%}: measuring {stage.name} here at the cores the "
                    f"{spec.budget_cores:g}-core budget allows (about {minutes_to_measure(spec, [stage]):.0f} "
                    f"min, once) into {local}"))
        elif not local.exists():
            say(f"{stage.name}: measuring it on {machine} at the cores the {spec.budget_cores:g}-core budget "
                f"allows (about {minutes_to_measure(spec, [stage]):.0f} min, once) into {local}")
        paths[stage.name] = str(await measured_here(spec, stage, local, models_dir, settings, progress))
    return spec.model_copy(update={"stages": [
        s.model_copy(update={"profile": paths[s.name]}) if s.name in paths else s for s in spec.stages
    ]})
