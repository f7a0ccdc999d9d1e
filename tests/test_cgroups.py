"""CPU limits: cgroup quotas changed in place (where a cgroup is writable) and the affinity fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.executors.cgroups import (
    PERIOD_US,
    WEIGHT_PER_CORE,
    CpuController,
    detect_cpu_controller,
    process_alive,
    quota_us,
)

SPIN = [sys.executable, "-c", "while True: pass"]


@pytest.fixture
def controller() -> CpuController:
    c = detect_cpu_controller()
    if c.kind == "affinity":
        pytest.skip("no writable CPU cgroup here; the fallback is tested below")
    return c


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(SPIN)
    yield p
    p.kill()
    p.wait()


def test_quota_is_cores_times_period() -> None:
    assert quota_us(1.0) == PERIOD_US
    assert quota_us(0.25) == PERIOD_US // 4
    assert quota_us(1.5) == 150_000
    assert quota_us(0.001) == 1_000  # the kernel's floor
    with pytest.raises(ValueError):
        quota_us(0)


def test_quota_changes_in_place_and_throttles(controller: CpuController, spinner: subprocess.Popen[bytes]) -> None:
    limit = controller.create("test-quota", 0.01)
    try:
        assert limit.path is not None and limit.path.name == f"ipa-{os.getpid()}-test-quota"
        limit.attach(spinner.pid)
        assert limit.procs() == [spinner.pid]
        assert limit.read_cores() == pytest.approx(0.01)
        # A busy loop under 1 ms of CPU per 100 ms period is throttled (counted by the kernel), even when the
        # machine is so busy that it gets little CPU at all.
        for _ in range(100):
            stat = dict(line.split() for line in (limit.path / "cpu.stat").read_text().splitlines())
            if int(stat["nr_throttled"]) > 0:
                break
            time.sleep(0.05)
        assert int(stat["nr_throttled"]) > 0
        limit.set_cores(1.75)
        assert limit.read_cores() == pytest.approx(1.75)
        assert limit.quota_file is not None
        expected = "175000" if controller.kind == "cgroup1" else f"175000 {PERIOD_US}"
        assert limit.quota_file.read_text().strip() == expected
        assert spinner.poll() is None  # changed in place: the process kept running
    finally:
        limit.remove()
    # The process left for the parent group, still running; the group is gone.
    assert not limit.path.exists()
    assert spinner.poll() is None
    assert str(spinner.pid) in (controller.parent / "cgroup.procs").read_text().split()  # type: ignore[operator]


def test_stale_groups_of_dead_owners_are_removed(controller: CpuController) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert controller.parent is not None
    stale = controller.parent / f"ipa-{dead.pid}-old-0"
    stale.mkdir()
    mine = controller.create("mine-0", 1.0)
    try:
        removed = controller.remove_stale()
        assert stale.name in removed and not stale.exists()
        assert mine.path is not None and mine.path.exists()  # ours: owner alive
    finally:
        mine.remove()
        if stale.exists():
            stale.rmdir()


def test_replicas_weigh_less_than_a_process_per_core(controller: CpuController) -> None:
    # The quota caps a replica; its weight makes it yield to the router and the adapter under contention.
    limit = controller.create("light", 2.0)
    try:
        default = 1024 if controller.kind == "cgroup1" else 100
        assert limit.weight() == round(default * WEIGHT_PER_CORE * 2.0)
        limit.set_cores(0.25)
        assert limit.weight() == max(2 if controller.kind == "cgroup1" else 1, round(default * WEIGHT_PER_CORE / 4))
    finally:
        limit.remove()


def test_remove_is_idempotent(controller: CpuController) -> None:
    limit = controller.create("twice", 0.5)
    path = limit.path
    assert path is None or path.exists()  # a cgroup (None: the threads-and-affinity fallback has no folder)
    limit.remove()
    assert path is None or not path.exists()
    limit.remove()  # again: nothing to do, and no error
    assert path is None or not path.exists()
    assert path is None or path not in controller.groups()


def test_process_alive_sees_a_zombie_as_stopped() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert not process_alive(child.pid)  # exited, not yet reaped: its pid still answers kill(0)
    finally:
        child.wait()
    assert not process_alive(child.pid)  # reaped: gone


def test_affinity_fallback_pins_whole_cores(monkeypatch: pytest.MonkeyPatch,
                                            spinner: subprocess.Popen[bytes]) -> None:
    monkeypatch.setenv("IPA_CPU_LIMIT", "affinity")
    c = detect_cpu_controller()
    assert c.kind == "affinity" and c.parent is None
    limit = c.create("fallback", 0.5)
    limit.attach(spinner.pid)
    assert len(os.sched_getaffinity(spinner.pid)) == 1
    assert limit.read_cores() is None and limit.quota_file is None
    limit.set_cores(1.5)
    assert len(os.sched_getaffinity(spinner.pid)) == min(2, len(os.sched_getaffinity(0)))
    assert limit.procs() == [spinner.pid]
    limit.remove()


def test_fallback_warning_is_printed_once(tmp_path: Path) -> None:
    code = ("from adapter.executors.cgroups import detect_cpu_controller as d\n"
            "c = d(); d(); c.create('a', 1).attach(__import__('os').getpid())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "IPA_CPU_LIMIT": "affinity"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("warning: no writable CPU cgroup") == 1


def test_unknown_forced_kind_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPA_CPU_LIMIT", "cgroup3")
    with pytest.raises(RuntimeError, match="IPA_CPU_LIMIT"):
        detect_cpu_controller()


def test_unwritable_cgroups_fall_back(tmp_path: Path) -> None:
    # A cgroup tree we cannot use (no cpu controller files): detection must not fail, it falls back.
    (tmp_path / "cpu").mkdir()
    proc = tmp_path / "cgroup"
    proc.write_text("1:cpu:/\n0::/\n")
    c = detect_cpu_controller(root=tmp_path, proc_cgroup=proc)
    assert c.kind == "affinity"


def test_cgroup2_files_on_a_unified_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPA_CPU_LIMIT", raising=False)
    # This machine's cpu controller is on cgroup v1; the v2 file formats are checked on a copy of a unified
    # hierarchy's layout (plain files stand in for the kernel's; kernel semantics are tested above on v1).
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "cgroup.procs").write_text("")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/\n")
    c = detect_cpu_controller(root=tmp_path, proc_cgroup=proc)
    assert (c.kind, c.parent) == ("cgroup2", tmp_path)
    assert "+cpu" in (tmp_path / "cgroup.subtree_control").read_text()  # children get the cpu controller
    limit = c.create("v2", 0.5)
    assert limit.path == tmp_path / f"ipa-{os.getpid()}-v2" and limit.quota_file == limit.path / "cpu.max"
    assert limit.quota_file.read_text() == f"50000 {PERIOD_US}"
    limit.set_cores(1.25)
    assert limit.quota_file.read_text() == f"125000 {PERIOD_US}" and limit.read_cores() == 1.25
    assert limit.weight() == 16  # 1.25 cores at an eighth of the default weight (100) per core
    limit.attach(os.getpid())
    assert (limit.path / "cgroup.procs").read_text() == str(os.getpid())
