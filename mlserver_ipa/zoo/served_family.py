"""A demo family made ready to serve from a `--models` folder without writing into a family built there.

    repository = served_family("sentiment", Path("/models/sentiment"), ["distilbert-sentiment"], cache)

What `ipa up`, `ipa demo` and `ipa profile` call for a stage whose variants come from a demo family:

- a family not built in the folder yet (no `<folder>/<family>/model-settings.json`) is built there
  (`build_repository`): the folder is where demo families are built, and the build is ours;
- a family built there is read as it is and never rebuilt or written (it may be a user's folder, or read-only;
  bringing it up to date is `ipa models build`'s job). A variant it lacks is a `BuildArgumentError` that says
  how to add it. An encoder-only variant (its family served by onnxruntime) whose folder has neither a
  `model.onnx` nor an `execution.json` (built before the exports, or by hand) is served from the export cache
  (`export_cache`): its model-settings.json is then written into the cache with that variant's `uri` pointing
  at the cache entry, and that file is the repository returned. Where the cache's disk has no room for the
  export, the variant is served as it is, in PyTorch, and the progress line says why.

A checkpoint folder a graph names itself (`model: /path/to/folder`) never comes here: it is served unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from mlserver_ipa.onnx_encoder import EXECUTION_FILE, ONNX_FILE
from mlserver_ipa.zoo.export_cache import ExportCache, NoRoom
from mlserver_ipa.zoo.families import ONNX_FAMILIES
from mlserver_ipa.zoo.repository import BuildArgumentError, BuiltVariant, build_repository
from mlserver_ipa.zoo.transformers_families import TRANSFORMERS_FAMILIES

SETTINGS_FILE = "model-settings.json"
REPOSITORIES = "repositories"


def served_family(family: str, folder: Path, variants: Sequence[str] | None, cache: ExportCache,
                  progress: Callable[[str], None] | None = None) -> Path:
    """The model repository serving `variants` of `family` (default: all) from `folder` (see module doc): the
    family's folder `<folder>/<family>`, or a model-settings.json in the export cache."""
    fam = TRANSFORMERS_FAMILIES.get(family) or ONNX_FAMILIES.get(family)
    if fam is None:
        raise BuildArgumentError(f"unknown family {family!r}; known: {', '.join([*ONNX_FAMILIES, *TRANSFORMERS_FAMILIES])}")
    names = list(fam.variant_names) if variants is None else [v for v in fam.variant_names if v in variants]
    model_dir = folder / fam.name
    settings_path = model_dir / SETTINGS_FILE
    if not settings_path.is_file():
        def built(b: BuiltVariant) -> None:
            if progress is not None:
                progress(f"  {b.name}: {'built' if b.rebuilt else 'up to date'} in {b.path}")

        build_repository(family, folder, names, progress=built)
        return model_dir
    try:
        settings = json.loads(settings_path.read_text())
        listed = {str(v["name"]): v for v in settings["parameters"]["extra"]["variants"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BuildArgumentError(f"{settings_path}: not a model-settings.json of a built family ({e})") from None
    missing = [n for n in names if n not in listed or not (model_dir / str(listed[n]["uri"])).exists()]
    if missing:
        every = [v for v in fam.variant_names if v in listed or v in names]
        raise BuildArgumentError(
            f"{model_dir} is built without {', '.join(missing)}; a built family folder is not changed here: add "
            f"them with `ipa models build --family {family} --variants {','.join(every)} --out {folder}`")
    redirected = False
    for n in names:
        source = (model_dir / str(listed[n]["uri"])).resolve()
        exported = (source / ONNX_FILE).is_file() or (source / EXECUTION_FILE).is_file()
        if getattr(fam, "backend", None) != "onnxruntime" or exported:
            what = f"as built in {source}"
        else:  # an encoder variant without its export: the cache's, never one written beside the weights
            try:
                listed[n]["uri"] = str(cache.served(source))
                what, redirected = f"from the export cache, {listed[n]['uri']} (no model.onnx in {source})", True
            except NoRoom as e:
                what = f"as built in {source}, in PyTorch ({e})"
        if progress is not None:
            progress(f"  {n}: served {what}")
    if not redirected:
        return model_dir
    for v in listed.values():
        v["uri"] = str((model_dir / str(v["uri"])).resolve())  # absolute: the file lives in the cache
    data = (json.dumps(settings, indent=2) + "\n").encode()
    out = cache.root / REPOSITORIES / f"{fam.name}-{hashlib.sha256(data).hexdigest()[:16]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out
