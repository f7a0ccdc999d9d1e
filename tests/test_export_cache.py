"""A family built in a `--models` folder is served without writing into it: ONNX exports go to the export cache.

Tiny builds (seconds) stand for the full-size ones in a shared, read-only folder: their exports are removed, as
in a build made before the exports existed, and `ipa up`'s `build_models` must leave every file as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MLServer

from adapter.control.embedded import UpSettings, build_models
from adapter.errors import UsageError
from adapter.executors.local.replica import stage_template
from adapter.spec import GraphSpec, load_spec
from mlserver_ipa.onnx_encoder import EXECUTION_FILE, ONNX_FILE
from mlserver_ipa.settings import SequenceLimits
from mlserver_ipa.transformers_session import TransformersSession
from mlserver_ipa.zoo import ExportCache, build_repository

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["distilbert-sentiment", "bert-sentiment"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def unexported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<models>/sentiment`: two tiny variants without their exports, as a build from before them."""
    models = tmp_path_factory.mktemp("models")
    build_repository("sentiment", models / "sentiment", VARIANTS, tiny=True)
    for v in VARIANTS:
        for name in (ONNX_FILE, EXECUTION_FILE):
            (models / "sentiment" / "sentiment" / v / name).unlink()
    return models


def sentiment_only(variants: list[str]) -> GraphSpec:
    spec = load_spec(ROOT / "inference_graphs" / "audio-sent.yaml")
    stage = spec.stages[1]
    stage = stage.model_copy(update={"variants": [v for v in stage.variants if v.name in variants]})
    return spec.model_copy(update={"stages": [stage]})


def test_ipa_up_serves_a_built_family_unwritten_with_its_exports_from_the_cache(
    unexported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_mlserver: Callable[..., MLServer]
) -> None:
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("IPA_EXPORT_CACHE", str(cache_root))
    spec = sentiment_only(VARIANTS)
    before = snapshot(unexported)
    lines: list[str] = []
    repos = build_models(spec, UpSettings(models=unexported), progress=lines.append)
    assert snapshot(unexported) == before
    assert repos["nlp-sent"].parent == cache_root / "repositories"
    assert sum("from the export cache" in line for line in lines) == 2

    template = stage_template(spec, spec.stages[0], repos["nlp-sent"])
    uris = {v["name"]: Path(v["uri"]) for v in template["parameters"]["extra"]["variants"]}
    assert {u.parent for u in uris.values()} == {cache_root}
    source = unexported / "sentiment" / "sentiment" / "distilbert-sentiment"
    served = TransformersSession("d", uris["distilbert-sentiment"], 1, SequenceLimits())
    torch = TransformersSession("d", source, 1, SequenceLimits())
    assert (served.backend, torch.backend) == ("onnxruntime", "torch")
    rows = [{"input": np.array([t], dtype=object)} for t in ("Fine.", "A much longer and rather gloomy sentence.")]
    a, b = served.run_sync(rows), torch.run_sync(rows)
    assert list(a["label"]) == list(b["label"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)

    exports = {p: p.stat().st_mtime_ns for p in cache_root.glob(f"*/{ONNX_FILE}")}
    assert len(exports) == 2
    again = build_models(spec, UpSettings(models=unexported), progress=lambda line: None)
    assert again == repos  # made once, reused
    assert {p: p.stat().st_mtime_ns for p in cache_root.glob(f"*/{ONNX_FILE}")} == exports
    assert snapshot(unexported) == before

    repo = tmp_path / "repo"
    (repo / "nlp-sent").mkdir(parents=True)
    (repo / "nlp-sent" / "model-settings.json").write_text(json.dumps(template))
    server = start_mlserver(repo)
    r = httpx.post(f"{server.http_url}/v2/models/{template['name']}/infer", timeout=60, json={
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["What a day."]}]})
    assert r.status_code == 200, r.text
    assert {o["name"] for o in r.json()["outputs"]} >= {"label", "score"}
    assert snapshot(unexported) == before


def test_a_variant_missing_from_a_built_family_is_not_built_into_it(unexported: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPA_EXPORT_CACHE", str(tmp_path / "cache"))
    before = snapshot(unexported)
    with pytest.raises(UsageError, match=r"built without roberta-sentiment.*ipa models build --family sentiment "
                                         r"--variants distilbert-sentiment,bert-sentiment,roberta-sentiment"):
        build_models(sentiment_only([*VARIANTS, "roberta-sentiment"]), UpSettings(models=unexported),
                     progress=lambda line: None)
    assert snapshot(unexported) == before


def test_the_export_cache_is_keyed_by_content_and_bounded(unexported: Path, tmp_path: Path) -> None:
    built = unexported / "sentiment" / "sentiment"
    cache = ExportCache(tmp_path / "cache", max_bytes=10**12)
    first = cache.served(built / "distilbert-sentiment")
    moved = tmp_path / "elsewhere"
    shutil.copytree(built / "distilbert-sentiment", moved)
    assert cache.served(moved) == first  # the same content, wherever it lies
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    changed = cache.served(moved)
    assert changed != first and len(cache.entries()) == 2

    small = ExportCache(tmp_path / "cache", max_bytes=1)  # another run, a bound smaller than one export
    kept = small.served(built / "bert-sentiment")
    assert small.entries() == [kept]  # older entries gone; the one this run serves kept
    assert not first.exists() and not changed.exists()
    assert (built / "distilbert-sentiment" / "config.json").is_file()  # links removed, never their targets


def test_the_cache_and_its_bound_come_from_the_environment(tmp_path: Path) -> None:
    cache = ExportCache.from_environment({"XDG_CACHE_HOME": str(tmp_path), "IPA_EXPORT_CACHE_GB": "0.5"})
    assert (cache.root, cache.max_bytes) == (tmp_path / "ipa" / "onnx", 500_000_000)
    assert ExportCache.from_environment({"IPA_EXPORT_CACHE": str(tmp_path / "x")}).root == tmp_path / "x"
    for bad in ("0", "-1", "lots", "inf", "nan"):
        with pytest.raises(ValueError, match="IPA_EXPORT_CACHE_GB"):
            ExportCache.from_environment({"IPA_EXPORT_CACHE_GB": bad})
