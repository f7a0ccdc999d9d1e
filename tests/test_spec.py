"""Inference-graph specs: every bad spec makes `ipa spec check` exit non-zero with one line naming file and field;
every shipped spec loads; missing profiles say which `ipa profile` command measures them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.profiling.profile import load_graph_profiles
from adapter.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted((ROOT / "inference_graphs").glob("*.yaml"))

GOOD = """\
name: tiny
slo_ms: 100
budget_cores: 2
stages:
  - name: only
    variants:
      - {name: a, accuracy: 50}
      - {name: b, accuracy: 60}
    profile: p.csv
"""


def check(capsys: pytest.CaptureFixture[str], *files: Path) -> tuple[int, list[str], str]:
    code = main(["spec", "check", *map(str, files)])
    out = capsys.readouterr()
    return code, [line for line in out.err.splitlines() if line.strip()], out.out


def write(tmp_path: Path, text: str, name: str = "graph.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BAD = {
    "unknown field": (GOOD.replace("budget_cores: 2", "budget_cores: 2\nbudget: 3"), "budget: unknown field"),
    "misspelt field": (GOOD.replace("stages:", "stage:"), "stage: unknown field (did you mean 'stages'?)"),
    "missing stages": (GOOD.split("stages:")[0], "stages: Field required"),
    "empty stages": (GOOD.split("stages:")[0] + "stages: []\n", "stages: List should have at least 1 item"),
    "negative slo": (GOOD.replace("slo_ms: 100", "slo_ms: -5"), "slo_ms: Input should be greater than 0"),
    "variant without accuracy": (GOOD.replace("{name: b, accuracy: 60}", "{name: b}"),
                                 "stages[0].variants[1].accuracy: Field required"),
    "bad yaml": (GOOD.replace("slo_ms: 100", "slo_ms: [100"), "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "(top level): expected a mapping"),
    "core off the cpu step": (GOOD.replace("    profile: p.csv", "    cores: [0.3]\n    profile: p.csv"),
                              "stages[0].cores[0]: 0.3 is not a multiple of cpu_step 0.25"),
    "budget below one replica per stage": (GOOD.replace("budget_cores: 2", "budget_cores: 0.1"),
                                           "budget_cores: 0.1 is less than"),
    "load quantile of 1 or more": (GOOD.replace("budget_cores: 2", "budget_cores: 2\nload_quantile: 1.5"),
                                   "load_quantile: Input should be less than 1"),
    "static variant not in stage": (GOOD.replace("    profile: p.csv", "    profile: p.csv\n    static: {variant: z}"),
                                    "stages[0]: static.variant 'z' is not one of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_gives_one_line_naming_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      case: str) -> None:
    text, expected = BAD[case]
    path = write(tmp_path, text)
    code, err, _ = check(capsys, path)
    assert code != 0
    assert len(err) == 1, err
    assert str(path) in err[0] and expected in err[0], err[0]


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = check(capsys, tmp_path / "nope.yaml")
    assert code != 0 and len(err) == 1 and "nope.yaml: (file): No such file" in err[0]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xfe\x00\x81 not text", "unreadable profile: not UTF-8"),
        (None, "unreadable profile: Is a directory"),
    ],
)
def test_unreadable_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
                            reason: str) -> None:
    path = write(tmp_path, GOOD)
    if content is None:
        (tmp_path / "p.csv").mkdir()
    else:
        (tmp_path / "p.csv").write_bytes(content)
    code, err, _ = check(capsys, path)
    assert code != 0 and len(err) == 1, err
    assert f"{path}: stages[0].profile: {reason}" in err[0]


def test_malformed_profile_names_its_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "p.csv").write_text(
        "stage,variant,batch,cores,p50_ms,p99_ms,mean_ms,throughput_rps,samples,machine\n"
        "only,a,1,1,10,12,11,90,100,m\n"
        "only,b,1,1,10,twelve,11,90,100,m\n"
    )
    code, err, _ = check(capsys, path)
    assert code != 0 and len(err) == 1, err
    assert "p.csv: line 3: p99_ms: Input should be a valid number" in err[0]


def test_variant_missing_from_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "p.csv").write_text(
        "stage,variant,batch,cores,p50_ms,p99_ms,mean_ms,throughput_rps,samples,machine\n"
        "only,a,1,1,10,12,11,90,100,m\n"
    )
    code, err, _ = check(capsys, path)
    assert code != 0 and len(err) == 1, err
    assert f"{path}: stages[0].variants[1].name: variant b has no rows" in err[0]
    assert "ipa profile" in err[0] and "--variants b" in err[0]


def test_missing_profile_is_a_note_for_check_and_an_error_for_solving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)
    code, err, out = check(capsys, path)
    assert code == 0 and "ok" in out
    assert len(err) == 1 and "profile missing" in err[0]

    assert main(["spec", "check", "--require-profiles", str(path)]) != 0
    err2 = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err2) == 1
    assert f"{path}: stages[0].profile: profile missing: p.csv does not exist" in err2[0]
    assert f"`ipa profile {path} --stage only`" in err2[0]


def test_spec_check_require_profiles_passes_for_every_shipped_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(GRAPHS) >= 6  # the six graphs of the issue (and the InfAdapter one)
    assert main(["spec", "check", "--require-profiles", *map(str, GRAPHS)]) == 0
    out = capsys.readouterr()
    assert not [line for line in out.err.splitlines() if line.strip()], out.err


@pytest.mark.parametrize("graph", GRAPHS, ids=[g.stem for g in GRAPHS])
def test_shipped_spec_loads(graph: Path) -> None:
    spec = load_spec(graph)
    assert spec.name == graph.stem
    for stage in spec.stages:
        assert stage.variants and all(0 < v.accuracy <= 100 for v in stage.variants)
        assert stage.static_config().variant in {v.name for v in stage.variants}
    profiles = load_graph_profiles(load_spec(graph, require_profiles=True))  # every shipped graph is measured
    for stage in spec.stages:
        prof = profiles[stage.name]
        assert {v.name for v in stage.variants} <= set(prof.variants())
        for v in stage.variants:  # the optimizer asks for every choice the spec offers
            for b in stage.batch_sizes:
                for c in stage.cores:
                    pt = prof.point(v.name, b, c)
                    assert pt.p99_ms >= pt.p50_ms > 0 and pt.throughput_rps > 0


def test_shipped_specs_check_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, out = check(capsys, *GRAPHS)
    assert code == 0
    assert out.count(": ok: ") == len(GRAPHS)
    assert main(["spec", "show", str(ROOT / "inference_graphs" / "video-monitoring.yaml")]) == 0
    shown = capsys.readouterr().out
    assert "slo_ms:" in shown and "stages[1] classifier" in shown and "p99 fit R2" in shown


def test_video_pipeline_reuses_the_resnet_profile() -> None:
    video = load_spec(ROOT / "inference_graphs" / "video-monitoring.yaml")
    resnet = load_spec(ROOT / "inference_graphs" / "resnet.yaml")
    assert video.profile_path(video.stage("classifier")) == resnet.profile_path(resnet.stages[0])
