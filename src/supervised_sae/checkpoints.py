"""Atomic, rotating training checkpoints that load with weights_only=True.

A checkpoint carries the identity of its run: every setting and input that changes the
result. One whose identity differs from the current run's is never resumed; its folder
is moved aside and the run starts fresh.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from supervised_sae.atomic import free_space, torch_save

log = logging.getLogger(__name__)

FORMAT = "supervised_sae.checkpoint.v1"
_NAME = re.compile(r"^ckpt_epoch(\d+)\.pt$")


class CheckpointError(ValueError):
    """A file in the checkpoint folder that is not a checkpoint of this package."""


class RunInUseError(ValueError):
    """Another live process is training into the same run folder."""


@contextmanager
def exclusive_run(checkpoint_dir: str | Path) -> Iterator[None]:
    """One live training per checkpoint folder. Two processes writing one run would
    interleave their checkpoints and outputs; the second is refused, naming the first.
    The lock (checkpoints.lock beside the folder) is dropped by the kernel when its
    holder ends, however it ends; a holder that ends normally also removes the file."""
    path = Path(f"{Path(checkpoint_dir)}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_lock(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "unknown"
            raise RunInUseError(f"{path.parent}: another process (pid {holder}) is training "
                                "this run right now; wait for it to end or stop it, then run "
                                "again (it resumes from the last checkpoint)") from None
        try:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n".encode())
            except OSError as err:  # a full disk fails here first
                raise _cannot_write(path, err) from err
            yield
        finally:  # removed while still held, so no run ever leaves it behind
            path.unlink(missing_ok=True)


def _open_lock(path: Path):
    try:  # unbuffered: a write that fails on a full disk is not retried at close
        return open(path, "a+b", buffering=0)
    except OSError as err:
        raise _cannot_write(path, err) from err


def _cannot_write(path: Path, err: OSError) -> OSError:
    return OSError(err.errno, f"cannot write {path}: {err.strerror} ({free_space(path)})")


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """Content hash of a file (an init SAE, a table), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(tensors: list[torch.Tensor]) -> str:
    """Content hash of some tensors (e.g. a frozen LM readout copied into an SAE)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ, nested keys spelled a.b."""
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in identity_differences(a, b)]
        elif a != b:
            keys.append(str(key))
    return keys


def _not_recordable(value: Any) -> Any:
    """A value a run's identity cannot hold, named (e.g. a config key the job's rule did
    not pass it: a Snakemake started before this version of the config spec)."""
    raise ValueError(f"a checkpoint's identity cannot record {value!r}; if a config key is "
                     "named, the Snakemake run that started this job read an older config: "
                     "start it again")


class CheckpointStore:
    """Checkpoints `ckpt_epochNNNNN.pt` in one folder; the newest `keep` are kept."""

    def __init__(self, folder: str | Path, keep: int = 3, identity: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.keep = keep
        # What must match for a checkpoint to be resumed: every setting and input that
        # changes the result. JSON-normalised so it compares equal after a reload.
        self.identity = json.loads(json.dumps(identity or {}, default=_not_recordable))

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def latest_path(self) -> Path | None:
        paths = self.paths()
        return paths[0] if paths else None

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        path = self.folder / f"ckpt_epoch{epoch:05d}.pt"
        torch_save({"format": FORMAT, "identity": self.identity, **state}, path)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, falling back past corrupt ones with a warning."""
        for path in self.paths():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated, not a zip, unpicklable: skip it
                log.warning("checkpoint %s is unreadable (%s); trying the one before", path, err)
                continue
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a checkpoint of supervised_sae")
            if state.get("identity") != self.identity:
                self._set_aside(identity_differences(state.get("identity") or {},
                                                     self.identity))
                return None
            return state
        return None

    def _set_aside(self, differing: list[str]) -> None:
        """Move a stale run's checkpoints out of the way (replacing an older stale set)."""
        stale = self.folder.with_name(self.folder.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        self.folder.rename(stale)
        log.warning("checkpoints in %s are from a run with other %s; moved to %s, starting "
                    "fresh", self.folder, ", ".join(differing), stale)
