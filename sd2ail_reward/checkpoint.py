"""Atomic, verified checkpoint generations (shared/reference/RELIABILITY.md §2).

Layout under `root`::

    gen-000001000/        one generation: state.pt, meta.json, manifest.json
    gen-000002000/
    LATEST                text: the name of the newest committed generation
    .tmp-*                work in progress (ignored by readers, removed by the next save)

A save writes a whole generation into a ``.tmp-*`` directory, fsyncs every file and the
directory, renames it into place (atomic on POSIX), then replaces ``LATEST`` the same way: a crash
at any point leaves the previous generation loadable. A load verifies every file's sha256 against
the manifest, loads tensors with ``weights_only=True`` (never arbitrary pickle), and falls back
to older generations when one is corrupt or incomplete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE, META_FILE, MANIFEST_FILE, LATEST_FILE = (
    "state.pt",
    "meta.json",
    "manifest.json",
    "LATEST",
)
TMP_PREFIX = ".tmp-"
_GEN_RE = re.compile(r"^gen-(\d{9,})(?:\.(\d+))?$")
"""gen-{step:09d}, plus .{n} when a generation for that step already exists."""


class CheckpointError(RuntimeError):
    """No generation could be loaded."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified generation: the state as saved, its step and meta, and where it came from."""

    state: dict[str, Any]
    step: int
    meta: dict[str, Any]
    path: Path


def _gen_key(path: Path) -> tuple[int, int] | None:
    m = _GEN_RE.match(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_state(value: Any, where: str) -> None:
    """Refuse, at save time, anything ``torch.load(weights_only=True)`` would refuse at load."""
    if isinstance(value, torch.Tensor | bool | int | float | str | bytes | type(None)):
        return
    if isinstance(value, torch.dtype | torch.device | torch.Size):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_state(v, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise TypeError(f"{where} has key {k!r} of type {type(k).__name__}; use str/int")
            _check_state(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which weights_only "
        "loading refuses; store tensors, python scalars, str, lists, tuples and dicts "
        "(convert numpy arrays with torch.from_numpy)"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """Generations of checkpoints under one directory.

    One writing process (saves within it are serialised by a lock); any number of readers.
    """

    def __init__(self, root: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self._save_lock = threading.Lock()  # saves from several threads of one process queue up

    # ------------------------------------------------------------------------- listing

    def generations(self) -> list[Path]:
        """Complete generation directories (with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            key = _gen_key(p)
            if key is not None and p.is_dir() and (p / MANIFEST_FILE).is_file():
                found.append((key, p))
        return [p for _, p in sorted(found)]

    def _latest_name(self) -> str | None:
        try:
            name = (self.root / LATEST_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not _GEN_RE.match(name):
            logger.warning(
                "checkpoint %s: ignoring LATEST with unexpected content %r", self.root, name
            )
            return None
        return name

    # ------------------------------------------------------------------------- saving

    def save(self, state: dict[str, Any], *, step: int, meta: dict[str, Any] | None = None) -> Path:
        """Write a new generation for `step` atomically and point LATEST at it.

        `state` is a nested dict of tensors, python scalars, str, lists, tuples and dicts (str or
        int keys); `meta` must be JSON-serialisable. Both are checked before anything is written
        (TypeError), so nothing is saved that weights_only loading would later refuse.
        Returns the generation directory. A second save for the same step gets a ``.N`` suffix.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        _check_state(state, "state")
        try:
            meta_bytes = json.dumps(meta or {}, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise TypeError(f"meta is not JSON-serialisable: {e}") from e
        buf = io.BytesIO()
        torch.save(state, buf)
        files = {STATE_FILE: buf.getvalue(), META_FILE: meta_bytes}

        with self._save_lock:
            return self._commit(files, step)

    def _commit(self, files: dict[str, bytes], step: int) -> Path:
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "created": time.time(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {n: {"sha256": _sha256(b), "size": len(b)} for n, b in files.items()},
        }
        # The manifest goes last: a generation without one is never considered complete.
        files = {**files, MANIFEST_FILE: json.dumps(manifest, indent=1).encode()}
        final = self._place(files, lambda: self._free_name(step))
        self._prune(final.name)
        return final

    def _place(self, files: dict[str, bytes], final_name: Callable[[], Path]) -> Path:
        """Write `files` (in order) into a temporary directory, rename it into place under
        `final_name()` and point LATEST at it: a crash at any point leaves the store as it was."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root))
        try:
            for name, data in files.items():
                _write_file(tmp / name, data)
            fsync_path(tmp)
            final = final_name()
            os.replace(tmp, final)
            fsync_path(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._write_latest(final.name)
        return final

    def adopt(self, generation: Path) -> Path:
        """Copy a verified generation of another store (a carry committed from another
        machine) in under its own name, atomically, and point LATEST at it; a name already
        here is refused. Raises CheckpointError when `generation` does not verify."""
        self._load(generation, "cpu")
        final = self.root / generation.name
        if _gen_key(final) is None or final.exists():
            raise CheckpointError(f"cannot adopt {generation.name!r} into {self.root}")
        files = sorted(generation.iterdir(), key=lambda f: f.name == MANIFEST_FILE)
        with self._save_lock:
            return self._place({f.name: f.read_bytes() for f in files}, lambda: final)

    def _free_name(self, step: int) -> Path:
        base = f"gen-{step:09d}"
        final, n = self.root / base, 0
        while final.exists():
            n += 1
            final = self.root / f"{base}.{n}"
        return final

    def _write_latest(self, name: str) -> None:
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + "LATEST-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(name.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / LATEST_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(self.root)

    def _remove_stale_tmp(self) -> None:
        """Remove work left by a save that crashed (single writer, so none is in progress)."""
        for p in self.root.glob(TMP_PREFIX + "*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def _prune(self, latest: str) -> None:
        gens = self.generations()
        for p in gens[: max(0, len(gens) - self.keep)]:
            if p.name != latest:
                shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------------- loading

    def load_latest(self, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Load LATEST's generation, else the newest other generation that verifies.

        Raises CheckpointError listing every generation tried and why it was rejected.
        """
        latest = self._latest_name()
        candidates = list(reversed(self.generations()))
        if latest is not None:
            first = self.root / latest
            candidates = [first] + [p for p in candidates if p != first]
        tried: list[str] = []
        for path in candidates:
            try:
                return self._load(path, map_location)
            except CheckpointError as e:
                logger.warning("checkpoint %s skipped: %s", path, e)
                tried.append(f"{path.name} ({e})")
        if not tried:
            raise CheckpointError(f"no checkpoint generations in {self.root}")
        raise CheckpointError(f"no loadable checkpoint in {self.root}; tried: " + "; ".join(tried))

    def load(self, name: str, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Load the generation called `name`, with no fallback: a caller that names one
        (a trainer pairing its own checkpoint with the server's) wants that state or an error.
        """
        path = self.root / name
        if Path(name).name != name or _gen_key(path) is None or not path.is_dir():
            have = ", ".join(g.name for g in self.generations()) or "none"
            raise CheckpointError(
                f"no checkpoint generation {name!r} in {self.root} (have: {have})"
            )
        return self._load(path, map_location)

    def _load(self, path: Path, map_location: str | torch.device) -> Checkpoint:
        manifest = self._manifest(path)
        blobs: dict[str, bytes] = {}
        for name, entry in manifest["files"].items():
            try:
                data = (path / name).read_bytes()
            except OSError as e:
                raise CheckpointError(f"cannot read {name}: {e.strerror or e}") from e
            if len(data) != entry.get("size") or _sha256(data) != entry.get("sha256"):
                raise CheckpointError(f"{name} does not match its sha256/size in the manifest")
            blobs[name] = data
        try:
            state = torch.load(
                io.BytesIO(blobs[STATE_FILE]), map_location=map_location, weights_only=True
            )
        except Exception as e:  # UnpicklingError, RuntimeError, ...: anything means "not loadable"
            raise CheckpointError(f"{STATE_FILE} refused by weights_only loading: {e}") from e
        try:
            meta = json.loads(blobs[META_FILE])
        except ValueError as e:
            raise CheckpointError(f"{META_FILE} is not valid JSON: {e}") from e
        if not isinstance(state, dict) or not isinstance(meta, dict):
            raise CheckpointError("state or meta is not a dict")
        return Checkpoint(state=state, step=int(manifest["step"]), meta=meta, path=path)

    @staticmethod
    def _manifest(path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError("missing (no manifest.json)") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"manifest.json unreadable: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"manifest.json is not format_version {FORMAT_VERSION}")
        files = manifest.get("files")
        step = manifest.get("step")
        if not isinstance(files, dict) or not isinstance(step, int) or isinstance(step, bool):
            raise CheckpointError("manifest.json lacks files/step")
        if set(files) != {STATE_FILE, META_FILE} or not all(
            isinstance(v, dict) for v in files.values()
        ):
            raise CheckpointError(
                f"manifest.json lists {sorted(files)}, expected state.pt, meta.json"
            )
        return manifest
