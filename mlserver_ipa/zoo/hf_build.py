"""Writes a `transformers` family as an MLServer model repository of Hugging Face checkpoint folders.

    OUT/settings.json
    OUT/<model>/model-settings.json       VariantRuntime; each variant's `uri` is its folder
    OUT/<model>/<variant>/                 save_pretrained: config.json, model.safetensors, generation_config.json,
                                           tokenizer files, preprocessor_config.json (speech), TOKENIZER.md;
                                           execution.json (the backend that serves it, and why) and, for the
                                           encoder-only families, model.onnx (`onnx_export`)
    OUT/<model>/build.json                 what each folder was built from, so unchanged ones are kept

Weights are random, drawn with torch's generator seeded by the variant's name, so a build is reproducible.
`tiny=True` shrinks every architecture (2 layers, hidden 32, 2,000 tokens where the vocabulary is trained):
the same code paths in a second, for tests.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlserver_ipa.tasks import TENSORS, task_of
from mlserver_ipa.zoo.families import variant_seed
from mlserver_ipa.zoo.transformers_families import Architecture, TransformersFamily

BUILDER_VERSION = 2
"""Bump when what a build writes changes: folders built by another version are rebuilt."""


def build_variant(arch: Architecture, variant: str, folder: Path, tiny: bool = False) -> int:
    """Instantiate `variant` with random weights and save it (model, generation config, tokenizer, features)
    into `folder`; return the folder's size in bytes."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from mlserver_ipa.zoo.tokenizer_training import make_tokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    dims = {**arch.dims, **(arch.tiny if tiny else {})}
    config_class = getattr(transformers, arch.config_class)
    config = config_class(**dims, architectures=[arch.model_class])
    if arch.labels:
        config.id2label = dict(enumerate(arch.labels))
        config.label2id = {label: i for i, label in enumerate(arch.labels)}
    torch.manual_seed(variant_seed(variant))
    model = getattr(transformers, arch.model_class)(config).eval()
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if arch.new_tokens is not None:  # fixed length: random weights would stop anywhere
        model.generation_config = GenerationConfig(
            max_new_tokens=arch.new_tokens, min_new_tokens=arch.new_tokens, num_beams=1, do_sample=False,
            decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(tmp)
    positions = dims.get("max_position_embeddings", dims.get("max_target_positions", 512))
    max_length = positions - 2 if arch.tokenizer in ("byte-bpe", "unigram-xlmr") and positions == 514 else positions
    tokenizer, what = make_tokenizer(arch.tokenizer, int(dims["vocab_size"]), arch.corpus, int(max_length))
    tokenizer.save_pretrained(tmp)
    if arch.model_class.startswith("Speech2Text"):
        from transformers import Speech2TextFeatureExtractor

        Speech2TextFeatureExtractor(feature_size=dims["input_feat_per_channel"], num_mel_bins=80,
                                    sampling_rate=16000).save_pretrained(tmp)
    (tmp / "TOKENIZER.md").write_text(
        f"# {variant}\n\n{arch.model_class} with the dimensions of {arch.card}"
        f"{' (tiny configuration)' if tiny else ''}, random weights (seeded by the variant's name): latency is "
        f"real, predictions are not. Accuracy is the model card's.\n\nTokenizer: {what}.\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def build_transformers_repository(
    fam: TransformersFamily,
    out: Path,
    names: Sequence[str],
    model: str,
    *,
    tiny: bool = False,
    progress: Callable[[str, Path, int, bool, float], None] | None = None,
) -> Path:
    """Write (or bring up to date) OUT/<model> serving `names` of `fam`; `progress(variant, folder, bytes,
    rebuilt, seconds)` after each variant."""
    model_dir = Path(out) / model
    model_dir.mkdir(parents=True, exist_ok=True)
    record_path = model_dir / "build.json"
    try:
        record: dict[str, Any] = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    for name in names:
        arch = fam.architecture(name)
        folder = model_dir / name
        params = {"family": fam.name, "tiny": tiny, "arch": _jsonable(arch), "builder": BUILDER_VERSION}
        entry = record.get(name)
        if entry and entry.get("params") == params and (folder / "config.json").is_file():
            size, rebuilt, seconds = int(entry.get("bytes", 0)), False, 0.0
        else:
            start = time.perf_counter()
            size = build_variant(arch, name, folder, tiny)
            seconds = time.perf_counter() - start
            rebuilt = True
            record[name] = {"params": params, "bytes": size}
            record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        size, exported, spent = _ensure_backend(fam, folder, record[name])
        if exported:
            record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if progress is not None:
            progress(name, folder, size, rebuilt or exported, seconds + spent)
    task = task_of(model_dir / names[0])
    inputs, outputs = TENSORS[task]
    settings = {
        "name": model,
        "implementation": "mlserver_ipa.runtime.VariantRuntime",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in outputs],
        "parameters": {"extra": {
            "variants": [{"name": v, "uri": v, "accuracy": fam.accuracy(v)} for v in names],
            "active": names[0],
        }},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return Path(out)


def _ensure_backend(fam: TransformersFamily, folder: Path, entry: dict[str, Any]) -> tuple[int, bool, float]:
    """Write the family's backend into `folder` (`execution.json`), exporting `model.onnx` when it is onnxruntime
    and the export is missing or stale (an existing build gains its export without being rebuilt); return the
    folder's size, whether it exported, and the seconds that took."""
    from mlserver_ipa.onnx_encoder import EXECUTION_FILE, ONNX_FILE, ExecutionRecord

    exported, seconds = False, 0.0
    if fam.backend == "onnxruntime":
        from mlserver_ipa.zoo.onnx_export import EXPORTER_VERSION, export_encoder

        wanted = {"exporter": EXPORTER_VERSION, "of": entry.get("params")}
        if entry.get("onnx") != wanted or not (folder / ONNX_FILE).is_file():
            start = time.perf_counter()
            export_encoder(folder)
            seconds = time.perf_counter() - start
            entry["onnx"] = wanted
            exported = True
    else:
        (folder / ONNX_FILE).unlink(missing_ok=True)
    record = ExecutionRecord(backend=fam.backend, why=fam.backend_why)
    (folder / EXECUTION_FILE).write_text(record.model_dump_json(indent=2) + "\n")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return size, exported, seconds


def _jsonable(arch: Architecture) -> dict[str, Any]:
    return json.loads(json.dumps(arch.__dict__, default=str))
