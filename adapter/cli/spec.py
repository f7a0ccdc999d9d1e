"""`ipa spec check GRAPH...` validates inference graphs (and the profiles they name); `ipa spec show GRAPH`
prints one with its defaults filled in and the state of each stage's profile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from adapter.errors import SpecError
from adapter.profiling.profile import Profile, load_stage_profile
from adapter.spec import GraphSpec, load_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("spec", help="validate and show inference-graph specs")
    sub = p.add_subparsers(dest="spec_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser(
        "check",
        help="validate specs; exit 2 with one line FILE: FIELD: reason per bad spec",
        description="Validate inference-graph specs and every profile file they name that exists. A profile "
        "that does not exist yet is a note on stderr (an error with --require-profiles).",
    )
    check.add_argument("graphs", nargs="+", metavar="GRAPH", help="inference-graph YAML file(s)")
    check.add_argument(
        "--require-profiles", action="store_true", help="a missing profile is an error (as it is for solving)"
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing for good specs")
    check.set_defaults(func=_check)

    show = sub.add_parser("show", help="print a spec with its defaults and the state of its profiles")
    show.add_argument("graph", metavar="GRAPH")
    show.set_defaults(func=_show)


def _display(path: Path) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def _check_one(file: str, require_profiles: bool) -> tuple[GraphSpec, list[str], dict[str, Profile]]:
    spec = load_spec(file, require_profiles=require_profiles)
    notes: list[str] = []
    profiles: dict[str, Profile] = {}
    for i, stage in enumerate(spec.stages):
        if not spec.profile_path(stage).exists():
            notes.append(
                f"{file}: stages[{i}].profile: profile missing: {stage.profile}; "
                f"run `{spec.profile_command(stage)}` to measure it"
            )
            continue
        profiles[stage.name] = load_stage_profile(spec, stage)
    return spec, notes, profiles


def _check(args: argparse.Namespace) -> int:
    bad = 0
    for file in args.graphs:
        try:
            spec, notes, profiles = _check_one(file, args.require_profiles)
        except SpecError as e:
            print(f"ipa spec: error: {e}", file=sys.stderr)
            bad += 1
            continue
        for n in notes:
            print(f"ipa spec: note: {n}", file=sys.stderr)
        if not args.quiet:
            stages = ", ".join(
                f"{s.name} ({len(s.variants)} variant{'s' if len(s.variants) != 1 else ''}, "
                + (f"{len(profiles[s.name].points)} profile points)" if s.name in profiles else "no profile)")
                for s in spec.stages
            )
            print(f"{file}: ok: {spec.name}: {stages}")
    return 2 if bad else 0


def _show(args: argparse.Namespace) -> int:
    spec, notes, profiles = _check_one(args.graph, False)
    print(f"# {args.graph}")
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).rstrip())
    print("# profiles")
    for i, stage in enumerate(spec.stages):
        path = _display(spec.profile_path(stage))
        if stage.name not in profiles:
            print(f"#   stages[{i}] {stage.name}: {path}: missing; run `{spec.profile_command(stage)}`")
            continue
        prof = profiles[stage.name]
        print(f"#   stages[{i}] {stage.name}: {path}: {len(prof.points)} points, machine {', '.join(prof.machines())}")
        for v in stage.variants:
            f = prof.fit(v.name)
            print(
                f"#     {v.name:<12} {len(prof.rows(v.name)):>3} points  p99 fit R2 {f.p99.r2:.3f}, "
                f"worst error {f.p99.error:.0%}; throughput fit R2 {f.period.r2:.3f}, worst error {f.period.error:.0%}"
            )
    return 0
