"""CPU limits for replica processes, changed in place while they run.

Every local replica runs in its own CPU cgroup named `ipa-<owner pid>-<replica>`; its quota is rewritten to
scale the replica vertically without a restart (a new quota takes effect within a scheduler period or two).
Three ways to limit CPU, found by `detect_cpu_controller()` in this order:

    cgroup2   `cpu.max` ("<quota> <period>") in a child of our own group on the unified hierarchy
    cgroup1   `cpu.cfs_quota_us` / `cpu.cfs_period_us` in a child of our group on the v1 `cpu` hierarchy
    affinity  neither is writable: the process is pinned to ceil(cores) CPUs with `sched_setaffinity`
              (whole cores only; a warning is printed once). The runtime's thread count does the rest.

Fractional cores are exact with cgroups (quota = cores x period). A replica's group also weighs little under
contention (`cpu.weight` / `cpu.shares`: `WEIGHT_PER_CORE` of a default process per core): the quota caps what
it takes, the weight says who yields when the machine is short. Replicas yield to the router, the adapter and
the load generator, which weigh as whole processes (the router at nice -5): with the replicas' quotas adding up
to the whole machine, the router had been starved at its share beside four replica groups of default weight and
the pipeline collapsed (1.3 % within the SLO, `benchmarks/pipeline_capacity.py`) instead of shedding. `IPA_CPU_LIMIT=cgroup2|cgroup1|affinity`
forces one way (e.g. to run unprivileged on a machine where root could write the cgroups).

    controller = detect_cpu_controller()
    limit = controller.create("detector-0", cores=1.5)
    limit.attach(pid)          # moves every thread of the process (cgroup.procs)
    limit.set_cores(0.75)      # in place
    limit.remove()             # moves what is left to the parent group, then removes the group
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CpuLimitKind = Literal["cgroup2", "cgroup1", "affinity"]

PREFIX = "ipa-"
PERIOD_US = 100_000  # the kernel default CFS period
MIN_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms
WEIGHT_PER_CORE = 1 / 8
"""A replica group's scheduling weight per core, as a share of a default process's (see module doc)."""

_warned_fallback = False


class CpuLimitError(RuntimeError):
    """A CPU limit could not be created, changed or removed; the message says which file and why."""


def _warn_fallback_once(reason: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        print(
            f"ipa: warning: no writable CPU cgroup ({reason}); limiting replicas by threads and CPU affinity "
            "(whole cores only)",
            file=sys.stderr,
        )


def quota_us(cores: float, period_us: int = PERIOD_US) -> int:
    """The CFS quota giving `cores` CPUs per period (fractional cores are exact to a microsecond)."""
    if cores <= 0:
        raise ValueError(f"cores must be > 0, got {cores}")
    return max(MIN_QUOTA_US, round(cores * period_us))


def _own_group(proc_cgroup: str, kind: CpuLimitKind) -> str | None:
    """Our own group path from the text of /proc/self/cgroup, on the hierarchy that holds `cpu`."""
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if kind == "cgroup2" and hier == "0" and controllers == "":
            return path
        if kind == "cgroup1" and "cpu" in controllers.split(","):
            return path
    return None


def _v2_parent(root: Path, own: str) -> Path | None:
    """A v2 group under which children get the `cpu` controller, or None when there is none we may use."""
    mount = root if (root / "cgroup.controllers").exists() else root / "unified"
    if not (mount / "cgroup.controllers").exists():
        return None
    parent = mount / own.lstrip("/")
    try:
        if "cpu" not in (parent / "cgroup.controllers").read_text().split():
            return None
        if "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
            # Fails for a non-root group that still holds processes ("no internal processes"); then no v2.
            (parent / "cgroup.subtree_control").write_text("+cpu")
    except OSError:
        return None
    return parent if os.access(parent, os.W_OK) else None


def _v1_parent(root: Path, own: str) -> Path | None:
    for mount in (root / "cpu", root / "cpu,cpuacct"):
        if not (mount / "cpu.cfs_quota_us").exists():
            continue
        # In a container /proc/self/cgroup may name the host's path while the mount shows our group as root.
        for parent in (mount / own.lstrip("/"), mount):
            if (parent / "cpu.cfs_quota_us").exists() and os.access(parent, os.W_OK):
                return parent
    return None


def _probe(parent: Path) -> str | None:
    """Create and remove a scratch group: the only sure test that we may create groups here."""
    probe = parent / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as e:
        return f"{parent}: {e.strerror or e}"
    return None


@dataclass
class CpuController:
    """Where and how CPU limits are made on this machine; `create()` makes one per replica."""

    kind: CpuLimitKind
    parent: Path | None  # the group under which `ipa-` groups are created (None for affinity)
    cpus: list[int] = field(default_factory=lambda: sorted(os.sched_getaffinity(0)))
    _next_cpu: int = 0  # affinity: replicas are spread round-robin over the CPUs

    def create(self, name: str, cores: float) -> CpuLimit:
        """A new limit of `cores` CPUs named `ipa-<our pid>-<name>`; attach processes with `attach()`."""
        full = f"{PREFIX}{os.getpid()}-{name}"
        if self.kind == "affinity":
            limit = CpuLimit(self, full, None, cores, first_cpu=self._next_cpu)
            self._next_cpu = (self._next_cpu + max(1, math.ceil(cores))) % len(self.cpus)
            return limit
        assert self.parent is not None
        path = self.parent / full
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise CpuLimitError(f"cannot create cgroup {path}: {e.strerror or e}") from e
        limit = CpuLimit(self, full, path, cores)
        limit.set_cores(cores)
        return limit

    def groups(self) -> list[Path]:
        """The `ipa-` groups that exist under our parent group (ours and other runs')."""
        if self.parent is None:
            return []
        return sorted(p for p in self.parent.glob(f"{PREFIX}*") if p.is_dir())

    def remove_stale(self) -> list[str]:
        """Remove `ipa-` groups left by runs whose owner process is gone (killed before cleaning up)."""
        removed = []
        for path in self.groups():
            owner = path.name[len(PREFIX) :].split("-", 1)[0]
            if owner.isdigit() and not process_alive(int(owner)):
                CpuLimit(self, path.name, path, 0.0).remove()
                removed.append(path.name)
        return removed


def process_alive(pid: int) -> bool:
    """True while `pid` runs; an exited process its parent has not reaped yet (a zombie) has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # /proc/<pid>/stat: "pid (comm) state ...", comm may hold spaces: the state follows the last ')'
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True


@dataclass
class CpuLimit:
    """The CPU limit of one replica: its processes, its cores, changed in place."""

    controller: CpuController
    name: str
    path: Path | None  # the group directory; None for affinity
    cores: float
    first_cpu: int = 0
    pids: set[int] = field(default_factory=set)

    @property
    def kind(self) -> CpuLimitKind:
        return self.controller.kind

    @property
    def quota_file(self) -> Path | None:
        """The file that holds the quota (`cpu.max` or `cpu.cfs_quota_us`); None for affinity."""
        if self.path is None:
            return None
        return self.path / ("cpu.max" if self.kind == "cgroup2" else "cpu.cfs_quota_us")

    def read_cores(self) -> float | None:
        """The cores the kernel enforces now, read back from the group (None: unlimited or affinity)."""
        if self.path is None:
            return None
        if self.kind == "cgroup2":
            quota, period = (self.path / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        quota_v1 = int((self.path / "cpu.cfs_quota_us").read_text())
        period_v1 = int((self.path / "cpu.cfs_period_us").read_text())
        return None if quota_v1 < 0 else quota_v1 / period_v1

    def affinity(self) -> set[int]:
        """The CPUs an affinity limit pins to: ceil(cores) of them, starting at this limit's first CPU."""
        cpus = self.controller.cpus
        n = min(len(cpus), max(1, math.ceil(self.cores - 1e-9)))
        return {cpus[(self.first_cpu + i) % len(cpus)] for i in range(n)}

    def set_cores(self, cores: float) -> None:
        """Change the limit in place; the processes keep running."""
        if cores <= 0:
            raise ValueError(f"cores must be > 0, got {cores}")
        self.cores = cores
        try:
            if self.kind == "cgroup2":
                assert self.path is not None
                (self.path / "cpu.max").write_text(f"{quota_us(cores)} {PERIOD_US}")
                self._weigh("cpu.weight", min(10_000, max(1, round(100 * WEIGHT_PER_CORE * cores))))
            elif self.kind == "cgroup1":
                assert self.path is not None
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us(cores)))
                self._weigh("cpu.shares", max(2, round(1024 * WEIGHT_PER_CORE * cores)))
            else:
                for pid in list(self.pids):
                    self._pin(pid)
        except OSError as e:
            raise CpuLimitError(f"cannot set {cores} cores on {self.path or self.name}: {e.strerror or e}") from e

    def _weigh(self, file: str, weight: int) -> None:
        """Set the group's weight where the kernel lets us; the quota alone still bounds the replica."""
        assert self.path is not None
        with contextlib.suppress(OSError):
            (self.path / file).write_text(str(weight))

    def weight(self) -> int | None:
        """The group's scheduling weight (`cpu.weight` or `cpu.shares`); None for affinity or unreadable."""
        if self.path is None:
            return None
        try:
            return int((self.path / ("cpu.weight" if self.kind == "cgroup2" else "cpu.shares")).read_text())
        except (OSError, ValueError):
            return None

    def attach(self, pid: int) -> None:
        """Put a process (all its threads, and the children it starts later) under this limit."""
        try:
            if self.path is not None:
                (self.path / "cgroup.procs").write_text(str(pid))
            else:
                self._pin(pid)
        except OSError as e:
            raise CpuLimitError(f"cannot attach pid {pid} to {self.path or self.name}: {e.strerror or e}") from e
        self.pids.add(pid)

    def _pin(self, pid: int) -> None:
        # sched_setaffinity acts on one thread; threads created later inherit from their creator.
        cpus = self.affinity()
        tasks = Path(f"/proc/{pid}/task")
        for tid in [int(t.name) for t in tasks.iterdir()] if tasks.exists() else [pid]:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass

    def procs(self) -> list[int]:
        """Processes in the group now (for affinity: the attached ones still alive)."""
        if self.path is None:
            return [p for p in self.pids if process_alive(p)]
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, timeout_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Remove the group: processes still in it move to the parent group first. Idempotent."""
        self.pids.clear()
        if self.path is None or not self.path.exists():
            return
        parent_procs = self.path.parent / "cgroup.procs"
        deadline = time.monotonic() + timeout_s
        while True:
            for pid in self.procs():
                try:
                    parent_procs.write_text(str(pid))
                except OSError:
                    pass  # exited meanwhile
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                # EBUSY while an exiting process is still accounted to the group; it clears in a moment.
                if time.monotonic() > deadline:
                    raise CpuLimitError(f"cannot remove cgroup {self.path}: {e.strerror or e}") from e
                sleep(0.05)


def detect_cpu_controller(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> CpuController:
    """How this machine limits CPU for us: cgroup v2, cgroup v1, or the affinity fallback (see module doc)."""
    forced = os.environ.get("IPA_CPU_LIMIT", "").strip()
    if forced and forced not in ("cgroup2", "cgroup1", "affinity"):
        raise CpuLimitError(f"IPA_CPU_LIMIT={forced!r}: expected cgroup2, cgroup1 or affinity")
    try:
        text = proc_cgroup.read_text()
    except OSError:
        text = ""
    reasons = []
    for kind in ("cgroup2", "cgroup1"):
        if forced and forced != kind:
            continue
        own = _own_group(text, kind)
        if own is None:
            reasons.append(f"{kind}: no cpu hierarchy in {proc_cgroup}")
            continue
        parent = _v2_parent(root, own) if kind == "cgroup2" else _v1_parent(root, own)
        if parent is None:
            reasons.append(f"{kind}: no writable cpu group for {own}")
            continue
        problem = _probe(parent)
        if problem is None:
            return CpuController(kind, parent)  # type: ignore[arg-type]
        reasons.append(f"{kind}: {problem}")
    _warn_fallback_once("IPA_CPU_LIMIT=affinity" if forced else "; ".join(reasons))
    return CpuController("affinity", None)
