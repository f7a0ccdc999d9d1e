"""ONNX exports of checkpoint folders that are not ours to write, kept in a cache keyed by the folder's content.

`ipa up`, `ipa demo` and `ipa profile` read a family already built in their `--models` folder and never write
into it (it may be a user's, or read-only; `served_family`). An encoder-only variant there without its ONNX
export (`onnx_export`) is served from an entry of this cache instead:

    <root>/<key>/               the variant as served: a symbolic link to each top-level file of the folder, its
                                `model.onnx`, and an `execution.json` naming the folder it was made from
    <root>/<key>/.used          touched whenever the entry is handed out: the least recently used go first
    <root>/hashes.json          each file's sha256 by (path, size, mtime, inode): a folder is hashed once
    <root>/repositories/*.json  the model-settings.json of a family served partly from entries (`served_family`)

`key` is a sha256 over the exporter's version and each top-level file of the folder (its name and the sha256 of
its bytes: config, tokenizer, weights), so a changed folder gets a new export and the same content, wherever it
lies, the same one. The root is `$IPA_EXPORT_CACHE`, else `$XDG_CACHE_HOME/ipa/onnx`, else `~/.cache/ipa/onnx`.
It holds at most `$IPA_EXPORT_CACHE_GB` (default 8: the full-size encoder families' exports are 4.1 GB) of
exports: after an export, the least recently used entries go until it fits, never one this cache handed out
(the replicas of this run serve them). An export needs about 2.2 times the folder's size free on the cache's disk
while it is made; without it `served` raises `NoRoom` and the variant is served as it is, in PyTorch. An entry is made in a temporary folder and renamed into place, so a
crash or a second process never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from mlserver_ipa.onnx_encoder import EXECUTION_FILE, ONNX_FILE, ExecutionRecord

CACHE_ENV = "IPA_EXPORT_CACHE"
LIMIT_ENV = "IPA_EXPORT_CACHE_GB"
DEFAULT_LIMIT_GB = 8.0
USED_FILE = ".used"
HASHES_FILE = "hashes.json"
ROOM_FACTOR = 2.2
"""Free disk an export needs, in multiples of the folder's size: the traced graph and its fused copy, briefly."""
OURS = frozenset({ONNX_FILE, EXECUTION_FILE})
"""Files of a folder an entry makes itself (not linked, not in the key)."""


class NoRoom(OSError):
    """The cache's disk has not the room an export needs: the folder is then served as it is (PyTorch)."""


def default_root(env: Mapping[str, str] = os.environ) -> Path:
    """`$IPA_EXPORT_CACHE`, else `$XDG_CACHE_HOME/ipa/onnx`, else `~/.cache/ipa/onnx`."""
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ipa" / "onnx"


class ExportCache:
    """The export cache at `root`, holding at most `max_bytes` of exports (see module doc)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._handed_out: set[Path] = set()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> ExportCache:
        """The cache the environment names (module doc); ValueError naming the variable when its bound is wrong."""
        raw = env.get(LIMIT_ENV) or str(DEFAULT_LIMIT_GB)
        try:
            gb = float(raw)
        except ValueError:
            gb = -1.0
        if not gb > 0 or gb == float("inf"):
            raise ValueError(f"{LIMIT_ENV}={raw!r}: a positive number of gigabytes")
        return cls(default_root(env), int(gb * 1e9))

    def key(self, folder: Path) -> str:
        """The content key of `folder` (module doc)."""
        from mlserver_ipa.zoo.onnx_export import EXPORTER_VERSION

        digest = hashlib.sha256(f"exporter {EXPORTER_VERSION}\n".encode())
        known = self._read_hashes()
        for f in _source_files(folder):
            digest.update(f"{f.name}\0{self._file_hash(f, known)}\n".encode())
        self._write_hashes(known)
        return digest.hexdigest()[:32]

    def served(self, folder: Path) -> Path:
        """The entry serving `folder` through onnxruntime: found, or exported now (then the cache is trimmed to
        its bound, sparing every entry this cache handed out)."""
        entry = self.root / self.key(folder)
        if not (entry / ONNX_FILE).is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            need = ROOM_FACTOR * sum(f.stat().st_size for f in _source_files(folder))
            free = shutil.disk_usage(self.root).free
            if free < need:
                raise NoRoom(f"no room for the ONNX export of {folder} in {self.root}: it needs about "
                             f"{need / 1e9:.1f} GB free, there are {free / 1e9:.1f} GB")
            self._make(folder, entry)
            self._handed_out.add(entry)
            self.trim()
        self._handed_out.add(entry)
        (entry / USED_FILE).touch()
        return entry

    def entries(self) -> list[Path]:
        """The complete entries, least recently used first."""
        found = [p for p in self.root.iterdir() if (p / ONNX_FILE).is_file()] if self.root.is_dir() else []
        return sorted(found, key=_last_used)

    def size_bytes(self) -> int:
        """Bytes the entries take (their own files: the links' targets are the folders')."""
        return sum(_entry_bytes(e) for e in self.entries())

    def trim(self) -> list[Path]:
        """Remove least recently used entries until the exports fit `max_bytes`; return those removed."""
        entries = self.entries()
        total = sum(_entry_bytes(e) for e in entries)
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry in self._handed_out:
                continue
            total -= _entry_bytes(entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        return removed

    # -- making an entry -------------------------------------------------------------------------------

    def _make(self, folder: Path, entry: Path) -> None:
        from mlserver_ipa.zoo.onnx_export import export_encoder

        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".{entry.name}.{os.getpid()}.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        try:
            for f in sorted(folder.iterdir()):
                if f.name not in OURS:
                    (staged / f.name).symlink_to(f.resolve())
            export_encoder(staged, staged / ONNX_FILE)
            record = ExecutionRecord(backend="onnxruntime",
                                     why=f"exported into the export cache from {folder.resolve()}: the model "
                                         "folder itself is not written by ipa up/demo/profile")
            (staged / EXECUTION_FILE).write_text(record.model_dump_json(indent=2) + "\n")
            try:
                staged.rename(entry)
            except OSError:  # another process made the same entry meanwhile: theirs is as good
                if not (entry / ONNX_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    # -- content hashes --------------------------------------------------------------------------------

    def _file_hash(self, f: Path, known: dict[str, dict[str, object]]) -> str:
        st = f.stat()
        where = str(f.resolve())
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        seen = known.get(where)
        if seen is not None and all(seen.get(k) == v for k, v in stamp.items()):
            return str(seen["sha256"])
        with f.open("rb") as handle:
            sha = hashlib.file_digest(handle, "sha256").hexdigest()
        known[where] = {**stamp, "sha256": sha}
        return sha

    def _read_hashes(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads((self.root / HASHES_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_hashes(self, known: dict[str, dict[str, object]]) -> None:
        kept = {p: v for p, v in known.items() if Path(p).exists()}  # bounded by the files that still exist
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{HASHES_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(kept, sort_keys=True))
        os.replace(tmp, self.root / HASHES_FILE)


def _source_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name not in OURS)


def _entry_bytes(entry: Path) -> int:
    return sum(f.lstat().st_size for f in entry.iterdir() if not f.is_symlink())


def _last_used(entry: Path) -> float:
    used = entry / USED_FILE
    return (used if used.exists() else entry).stat().st_mtime
