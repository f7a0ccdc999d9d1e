"""`ipa models`: build the demo variant families as MLServer model repositories, or list them.

    ipa models build --family {resnet,yolo} --out DIR [--variants a,b] [--resolution N] [--crop N]
                     [--model-name NAME]
    ipa models list

The families have the real architectures with deterministic random weights: their latency is real, their
accuracy is the model card's. `mlserver start DIR` serves what `build` writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapter.errors import UsageError
from mlserver_ipa.zoo import FAMILIES, BuildArgumentError, BuiltVariant, build_repository, measure_latency


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="build or list the demo variant families (ResNet, YOLOv5) as ONNX",
        description="Demo variant families built offline as ONNX: real architectures, deterministic random "
        "weights (latency is real, accuracy is the model card's).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    b = actions.add_parser(
        "build",
        help="write a family as an MLServer model repository",
        description="Write DIR/settings.json and DIR/MODEL/{model-settings.json,<variant>.onnx}, served by "
        "`mlserver start DIR`. Variants already built with the same parameters are kept. Prints each "
        "variant's file size and its measured batch-1 latency on one thread.",
    )
    b.add_argument("--family", required=True, help=f"one of: {', '.join(FAMILIES)}")
    b.add_argument("--out", required=True, type=Path, help="the model repository folder to write")
    b.add_argument("--variants", help="comma-separated variants (default: the whole family)")
    b.add_argument("--resolution", type=int, help="input side in pixels (default: the family's)")
    b.add_argument("--crop", type=int, help="yolo only: side of the `output` image passed on (default 64)")
    b.add_argument("--model-name", help="the served model's name (default: the family's name)")
    b.set_defaults(func=_build)

    ls = actions.add_parser("list", help="the families, their variants and model-card accuracies")
    ls.set_defaults(func=_list)


def _build(args: argparse.Namespace) -> int:
    if args.family not in FAMILIES:
        raise UsageError(f"unknown family {args.family!r}; known: {', '.join(FAMILIES)}")
    family = FAMILIES[args.family]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants is not None else None
    resolution = family.default_resolution if args.resolution is None else args.resolution
    total_bytes = 0

    def report(done: BuiltVariant) -> None:
        nonlocal total_bytes
        if total_bytes == 0:  # the arguments passed the builder's checks: say what is being built
            print(f"{family.name} ({family.task}) at {resolution}x{resolution} in {args.out}", flush=True)
            print(f"  {'variant':<10} {'':<7} {'size':>9} {'build':>7} {'batch-1, 1 thread':>18}", flush=True)
        total_bytes += done.size_bytes
        latency = measure_latency(done.path, family.inputs(resolution))
        action = "built" if done.rebuilt else "kept"
        build = f"{done.seconds:.1f} s" if done.rebuilt else "-"
        print(
            f"  {done.name:<10} {action:<7} {done.size_bytes / 1e6:>6.1f} MB {build:>7} {latency:>15.1f} ms",
            flush=True,
        )

    try:
        out = build_repository(
            family.name, args.out, variants, args.resolution, args.model_name, crop=args.crop, progress=report
        )
    except BuildArgumentError as e:
        raise UsageError(str(e)) from e
    model_name = args.model_name or family.name
    print(f"wrote {out / model_name} ({total_bytes / 1e6:.0f} MB); serve it with: mlserver start {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for family in FAMILIES.values():
        crop = f", passes on a {family.default_crop}x{family.default_crop} crop" if family.default_crop else ""
        print(f"{family.name}: {family.task}, input {family.default_resolution}x{family.default_resolution}{crop}")
        print(f"  {'variant':<10} {family.metric}")
        for v in family.variants:
            print(f"  {v.name:<10} {v.accuracy:g}")
    return 0
