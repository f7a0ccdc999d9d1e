"""Writes a demo family as a ready MLServer model repository: `mlserver start OUT` serves it as it is.

For the ONNX families (resnet, yolo):

    OUT/settings.json                      server settings (ports are overridden by MLSERVER_HTTP_PORT etc.)
    OUT/<model>/model-settings.json        VariantRuntime, the variants with their accuracies, the active one
    OUT/<model>/<variant>.onnx             one file per variant
    OUT/<model>/build.json                 what each file was built from, so unchanged ones are kept

Building is deterministic: the same arguments give the same bytes. A variant whose file exists and was built
from the same parameters (family, resolution, crop, and the builder's own source) is kept, not rebuilt. The `transformers` families (s2t, squad2-qa, sentiment, lang-id, opus-mt,
distilbart-xsum) are written as Hugging Face checkpoint folders instead (`hf_build`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlserver_ipa.zoo import graph, resnet, yolo
from mlserver_ipa.zoo.families import ONNX_FAMILIES, Family, ModelFamily
from mlserver_ipa.zoo.transformers_families import TRANSFORMERS_FAMILIES
from mlserver_ipa.zoo.verify import verify_model

RUNTIME = "mlserver_ipa.runtime.VariantRuntime"
SERVER_SETTINGS = {"parallel_workers": 0, "debug": False, "host": "127.0.0.1", "http_port": 8080, "grpc_port": 8081,
                   "metrics_port": 8082}
"""Loopback unless the user says otherwise (MLServer's own default is every interface)."""
BUILD_RECORD = "build.json"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BuildArgumentError(ValueError):
    """An argument to build_repository the caller can fix (unknown family or variant, bad resolution...)."""


@dataclass(frozen=True)
class BuiltVariant:
    """What build_repository did for one variant."""

    name: str
    path: Path
    size_bytes: int
    rebuilt: bool
    """False when an up-to-date file was kept."""
    seconds: float
    """Time spent building and checking it (0 when kept)."""


def build_repository(
    family: str,
    out: Path,
    variants: Sequence[str] | None = None,
    resolution: int | None = None,
    model_name: str | None = None,
    *,
    crop: int | None = None,
    tiny: bool = False,
    progress: Callable[[BuiltVariant], None] | None = None,
) -> Path:
    """Write (or bring up to date) the model repository `out` serving `variants` of `family`; return `out`.

    `variants` defaults to the whole family, `resolution` to the family's default, `model_name` to the family
    name, `crop` (the yolo family's `output` image side) to 64. `progress` is called once per variant as it
    is done. `tiny` (transformers families only) builds each architecture shrunk to a few layers of width 32.
    Raises BuildArgumentError for arguments that do not fit the family.
    """
    if family in TRANSFORMERS_FAMILIES:
        return _build_transformers(family, out, variants, resolution, model_name, crop, tiny, progress)
    if tiny:
        raise BuildArgumentError(f"the {family} family has no tiny configuration (only the transformers families)")
    fam = _family(family)
    names = _variants(fam, variants)
    r = _resolution(fam, resolution)
    c = _crop(fam, crop)
    model = model_name or fam.name
    if not MODEL_NAME.match(model):
        raise BuildArgumentError(f"model name {model!r}: use letters, digits, '_', '.', '-'")

    model_dir = Path(out) / model
    model_dir.mkdir(parents=True, exist_ok=True)
    record = _read_record(model_dir)
    params: dict[str, object] = {"family": fam.name, "resolution": r, "crop": c, "builder": _builder_fingerprint()}
    for name in names:
        path = model_dir / f"{name}.onnx"
        entry = record.get(name)
        if entry and entry.get("params") == params and path.is_file() and path.stat().st_size == entry.get("bytes"):
            done = BuiltVariant(name, path, path.stat().st_size, rebuilt=False, seconds=0.0)
        else:
            start = time.perf_counter()
            data = fam.build(name, r, c).SerializeToString()
            verify_model(data, fam.inputs(r), fam.outputs(r, c))
            _write_atomic(path, data)
            record[name] = {"params": params, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            _write_atomic(model_dir / BUILD_RECORD, _json(record, sort_keys=True))
            done = BuiltVariant(name, path, len(data), rebuilt=True, seconds=time.perf_counter() - start)
        if progress is not None:
            progress(done)

    _write_atomic(model_dir / "model-settings.json", _json(model_settings(fam, model, names, r, c)))
    _write_atomic(Path(out) / "settings.json", _json(SERVER_SETTINGS))
    return Path(out)


def model_settings(fam: Family, model_name: str, variants: Sequence[str], resolution: int, crop: int | None) -> dict:
    """The model-settings.json that serves `variants` of `fam` with VariantRuntime, the smallest one active."""
    return {
        "name": model_name,
        "implementation": RUNTIME,
        "inputs": [spec.metadata() for spec in fam.inputs(resolution)],
        "outputs": [spec.metadata() for spec in fam.outputs(resolution, crop)],
        "parameters": {
            "extra": {
                "variants": [{"name": v, "uri": f"{v}.onnx", "accuracy": fam.accuracy(v)} for v in variants],
                "active": variants[0],
            }
        },
    }


def _build_transformers(
    family: str, out: Path, variants: Sequence[str] | None, resolution: int | None, model_name: str | None,
    crop: int | None, tiny: bool, progress: Callable[[BuiltVariant], None] | None,
) -> Path:
    from mlserver_ipa.zoo.hf_build import build_transformers_repository

    fam = TRANSFORMERS_FAMILIES[family]
    if resolution is not None or crop is not None:
        raise BuildArgumentError(f"the {family} family takes text or speech: no resolution or crop")
    names = _variants(fam, variants)
    model = model_name or fam.name
    if not MODEL_NAME.match(model):
        raise BuildArgumentError(f"model name {model!r}: use letters, digits, '_', '.', '-'")

    def report(name: str, path: Path, size: int, rebuilt: bool, seconds: float) -> None:
        if progress is not None:
            progress(BuiltVariant(name, path, size, rebuilt, seconds))

    build_transformers_repository(fam, Path(out), names, model, tiny=tiny, progress=report)
    _write_atomic(Path(out) / "settings.json", _json(SERVER_SETTINGS))
    return Path(out)


# -- arguments -----------------------------------------------------------------------------------------


def _family(family: str) -> Family:
    if family not in ONNX_FAMILIES:
        known = ", ".join([*ONNX_FAMILIES, *TRANSFORMERS_FAMILIES])
        raise BuildArgumentError(f"unknown family {family!r}; known: {known}")
    return ONNX_FAMILIES[family]


def _variants(fam: ModelFamily, variants: Sequence[str] | None) -> list[str]:
    """The requested variants in the family's order (smallest first), without repeats."""
    if variants is None:
        return list(fam.variant_names)
    unknown = [v for v in variants if v not in fam.variant_names]
    if unknown:
        raise BuildArgumentError(
            f"unknown {fam.name} variant {unknown[0]!r}; known: {', '.join(fam.variant_names)}"
        )
    if not variants:
        raise BuildArgumentError("no variants given")
    return [v for v in fam.variant_names if v in variants]


def _resolution(fam: Family, resolution: int | None) -> int:
    r = fam.default_resolution if resolution is None else resolution
    if r < fam.resolution_step or r % fam.resolution_step or r < 32:
        raise BuildArgumentError(
            f"resolution {r}: the {fam.name} family needs a multiple of {fam.resolution_step}, at least 32"
        )
    return r


def _crop(fam: Family, crop: int | None) -> int | None:
    if fam.default_crop is None:
        if crop is not None:
            raise BuildArgumentError(f"the {fam.name} family has no crop output")
        return None
    c = fam.default_crop if crop is None else crop
    if c < 1:
        raise BuildArgumentError(f"crop {c}: must be at least 1")
    return c


# -- files ---------------------------------------------------------------------------------------------


def _builder_fingerprint() -> str:
    """A digest of the code that shapes the graphs: a change to it rebuilds every variant.

    It digests the modules' syntax trees without docstrings, so editing a comment or a docstring keeps the
    (large) built files.
    """
    digest = hashlib.sha256()
    for module in (graph, resnet, yolo):
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    body[0] = ast.Pass()
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def _read_record(model_dir: Path) -> dict[str, dict]:
    try:
        record = json.loads((model_dir / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _json(data: object, sort_keys: bool = False) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=sort_keys) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
