"""`ipa models`: build the demo variant families as MLServer model repositories, or list them.

    ipa models build --family {resnet,yolo} --out DIR [--variants a,b] [--resolution N] [--crop N]
                     [--model-name NAME]
    ipa models build --family {s2t,squad2-qa,sentiment,lang-id,opus-mt,distilbart-xsum} --out DIR
                     [--variants a,b] [--model-name NAME] [--tiny]
    ipa models list
    ipa models export-onnx FOLDER [FOLDER ...]

The families have the real architectures with deterministic random weights: their latency is real, their
accuracy is the model card's. ResNet and YOLO are written as ONNX, the speech and text families as Hugging
Face checkpoint folders (built with `transformers`); the encoder-only ones (squad2-qa, sentiment, lang-id) also
get their ONNX export, served through onnxruntime (`mlserver_ipa.onnx_encoder`). `mlserver start DIR` serves what
`build` writes. `export-onnx` exports a question-answering or classification checkpoint folder of your own
(`save_pretrained` layout) to FOLDER/model.onnx, so the runtime serves it through onnxruntime too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapter.errors import UsageError
from mlserver_ipa.zoo import (
    FAMILIES,
    BuildArgumentError,
    BuiltVariant,
    Family,
    TransformersFamily,
    build_repository,
    measure_latency,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="build or list the demo variant families (ResNet, YOLOv5 as ONNX; speech and text with transformers)",
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
    b.add_argument("--tiny", action="store_true",
                   help="transformers families: each architecture shrunk to 2 layers of width 32 (builds in "
                        "seconds; for tests and trying the serving path)")
    b.set_defaults(func=_build)

    x = actions.add_parser(
        "export-onnx",
        help="export encoder-only checkpoint folders (QA, classification) to FOLDER/model.onnx",
        description="Trace each folder's model to FOLDER/model.onnx (dynamic batch and sequence, fused for "
        "onnxruntime), checked against PyTorch; the runtime then serves the folder through onnxruntime.",
    )
    x.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    x.set_defaults(func=_export)

    ls = actions.add_parser("list", help="the families, their variants and model-card accuracies")
    ls.set_defaults(func=_list)


def _build(args: argparse.Namespace) -> int:
    if args.family not in FAMILIES:
        raise UsageError(f"unknown family {args.family!r}; known: {', '.join(FAMILIES)}")
    family = FAMILIES[args.family]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants is not None else None
    total_bytes = 0
    width = max(10, *(len(v) for v in family.variant_names))
    if isinstance(family, Family):
        resolution = family.default_resolution if args.resolution is None else args.resolution
        what = f"at {resolution}x{resolution}"
    else:
        what = "(tiny configurations)" if args.tiny else "(published dimensions)"

    def latency_ms(path: Path) -> float:
        if isinstance(family, Family):
            return measure_latency(path, family.inputs(resolution))
        from mlserver_ipa.settings import SequenceLimits
        from mlserver_ipa.transformers_session import TransformersSession

        return TransformersSession(path.name, path, 1, SequenceLimits()).measure(1) * 1000

    def report(done: BuiltVariant) -> None:
        nonlocal total_bytes
        if total_bytes == 0:  # the arguments passed the builder's checks: say what is being built
            print(f"{family.name} ({family.task}) {what} in {args.out}", flush=True)
            print(f"  {'variant':<{width}} {'':<7} {'size':>9} {'build':>7} {'batch-1, 1 thread':>18}", flush=True)
        total_bytes += done.size_bytes
        latency = latency_ms(done.path)
        action = "built" if done.rebuilt else "kept"
        build = f"{done.seconds:.1f} s" if done.rebuilt else "-"
        print(
            f"  {done.name:<{width}} {action:<7} {done.size_bytes / 1e6:>6.1f} MB {build:>7} {latency:>15.1f} ms",
            flush=True,
        )

    try:
        out = build_repository(
            family.name, args.out, variants, args.resolution, args.model_name, crop=args.crop, tiny=args.tiny,
            progress=report
        )
    except BuildArgumentError as e:
        raise UsageError(str(e)) from e
    model_name = args.model_name or family.name
    print(f"wrote {out / model_name} ({total_bytes / 1e6:.0f} MB); serve it with: mlserver start {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mlserver_ipa.tasks import is_model_folder
    from mlserver_ipa.zoo.onnx_export import export_encoder

    for folder in args.folders:
        if not is_model_folder(folder):
            raise UsageError(f"{folder}: not a checkpoint folder (no config.json)")
        try:
            path = export_encoder(folder)
        except ValueError as e:
            raise UsageError(str(e)) from e
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    for family in FAMILIES.values():
        if isinstance(family, Family):
            crop = f", passes on a {family.default_crop}x{family.default_crop} crop" if family.default_crop else ""
            side = family.default_resolution
            print(f"{family.name}: {family.task}, input {side}x{side}{crop}")
            print(f"  {'variant':<10} {family.metric}")
            for v in family.variants:
                print(f"  {v.name:<10} {v.accuracy:g}")
        elif isinstance(family, TransformersFamily):
            print(f"{family.name}: {family.task}, Hugging Face checkpoint folders (transformers, random weights)")
            print(f"  {'variant':<24} {family.metric:<26} model card")
            for v in family.variants:
                print(f"  {v.name:<24} {v.accuracy:<26g} {family.architecture(v.name).card}")
    return 0
