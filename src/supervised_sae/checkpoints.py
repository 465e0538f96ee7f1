"""Atomic, rotating training checkpoints that load with weights_only=True."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from .atomic import torch_save

log = logging.getLogger(__name__)

FORMAT = "supervised_sae.checkpoint.v1"
_NAME = re.compile(r"^ckpt_epoch(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that exists but does not belong to this run."""


class CheckpointStore:
    """Checkpoints `ckpt_epochNNNNN.pt` in one folder; the newest `keep` are kept."""

    def __init__(self, folder: str | Path, keep: int = 3, identity: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.keep = keep
        # What must match for a checkpoint to be resumed (shapes, mode, stage ...).
        self.identity = identity or {}

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
                raise CheckpointError(
                    f"{path}: checkpoint is from another run ({state.get('identity')}); this "
                    f"run is {self.identity}. Delete {self.folder} to start afresh."
                )
            return state
        return None
