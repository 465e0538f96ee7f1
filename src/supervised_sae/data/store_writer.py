"""The activation store's one writer: extraction, tests and benchmarks all write through it.

Rows arrive in blocks (in prompt order) and are hashed as they are written, so the
per-layer fingerprint costs no second pass. The file is written under a temporary name
and renamed when `close` completes it: a file that exists is complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from supervised_sae import __version__
from supervised_sae.atomic import atomic_path
from supervised_sae.data.store_layout import (
    DTYPES,
    FINGERPRINT_ATTR,
    STORE_FORMAT,
    value_classes,
)
from supervised_sae.layers import layer_name


class ActivationWriter:
    """with ActivationWriter(path, ...) as w: w.write_labels(...); w.write_rows(...) ...;
    w.write_answers(...). Leaving the block without error renames the file into place."""

    def __init__(self, path: str | Path, n_rows: int, d_model: int, layers: Sequence[int],
                 n_blocks: int, dtype: str = "float32", chunk_rows: int | None = None,
                 **attrs: Any):
        self.path, self.n_rows, self.d_model = Path(path), n_rows, d_model
        self.layers, self.n_blocks, self.dtype = list(layers), n_blocks, dtype
        self.chunk_rows = max(1, min(n_rows, chunk_rows or n_rows))
        self.attrs = attrs
        self._stack = ExitStack()

    def bytes_needed(self) -> int:
        """The file's size, from above: every layer's chunks (the last one is allocated
        whole), the label columns, and HDF5's metadata."""
        itemsize = np.dtype(DTYPES[self.dtype]).itemsize
        rows_allocated = -(-self.n_rows // self.chunk_rows) * self.chunk_rows
        data = rows_allocated * self.d_model * len(self.layers) * itemsize
        return int((data + self.n_rows * 64) * 1.01 + 2**20)

    def __enter__(self) -> ActivationWriter:
        # HDF5 that runs out of disk mid-write can crash the process (a segfault, not an
        # error): check the room first, and say so in one line naming the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free, needed = shutil.disk_usage(self.path.parent).free, self.bytes_needed()
        if free < needed:
            raise OSError(errno.ENOSPC, f"cannot write {self.path}: No space left on device "
                          f"(it needs about {needed / 2**20:,.1f} MiB and "
                          f"{free / 2**20:,.1f} MiB are free there)")
        try:
            self._open(needed)
        except BaseException:  # unwind what opened (the temporary file goes) and re-raise
            if not self._stack.__exit__(*sys.exc_info()):
                raise
        return self

    def _open(self, needed: int) -> None:
        tmp = self._stack.enter_context(atomic_path(self.path))
        f = self.file = self._stack.enter_context(h5py.File(tmp, "w"))
        self._reserve(tmp, needed)
        self._sets = [f.create_dataset(f"layers/{layer_name(k)}", shape=(self.n_rows,
                                       self.d_model), dtype=DTYPES[self.dtype],
                                       chunks=(self.chunk_rows, self.d_model))
                      for k in self.layers]
        self._hashers = [hashlib.sha256() for _ in self.layers]
        self._written = 0
        f.attrs.update(store_format=STORE_FORMAT, d_model=self.d_model,
                       n_layers=self.n_blocks, dtype=self.dtype,
                       package_version=__version__, n_prompts=self.n_rows, **self.attrs)

    def _reserve(self, tmp: Path, needed: int) -> None:
        """Allocate the file's blocks before HDF5 writes a row: a disk that fills up later
        (another job, another user) then cannot fail HDF5 mid-write, which leaves the
        library unable to close the file and the process to a segfault at exit."""
        if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the free-space check only
            return
        with open(tmp, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, needed)
            except OSError as err:
                raise OSError(err.errno, f"cannot write {self.path}: {err.strerror} (it "
                              f"needs about {needed / 2**20:,.1f} MiB; the disk could not "
                              "reserve them)") from err

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            if self._written != self.n_rows:
                raise ValueError(f"{self.path}: {self._written} of {self.n_rows} rows written")
            for layer_set, hasher in zip(self._sets, self._hashers, strict=True):
                layer_set.attrs[FINGERPRINT_ATTR] = hasher.hexdigest()
        self._stack.__exit__(*exc)

    def write_labels(self, *, relation: np.ndarray, person: np.ndarray, split: np.ndarray,
                     template: np.ndarray, template_heldout: np.ndarray,
                     relation_names: Sequence[str]) -> None:
        f = self.file
        f["relation"] = np.asarray(relation, np.int64)
        f["person"] = np.asarray(person, np.int64)
        f["split"] = np.asarray(split, np.int8)
        f["template"] = np.asarray(template, np.int64)
        f["template_heldout"] = np.asarray(template_heldout, bool)
        f.create_dataset("relation_names", data=list(relation_names),
                         dtype=h5py.string_dtype())

    def write_rows(self, start: int, acts: np.ndarray) -> None:
        """acts [len(layers), rows, d_model]: rows start.. of every stored layer, written
        in order (the fingerprint hashes rows in file order)."""
        if start != self._written:
            raise ValueError(f"rows must be written in order: expected row {self._written}, "
                             f"got {start}")
        stop = start + acts.shape[1]
        for k, (layer_set, hasher) in enumerate(zip(self._sets, self._hashers, strict=True)):
            block = np.ascontiguousarray(acts[k], dtype=DTYPES[self.dtype])
            layer_set[start:stop] = block
            hasher.update(block)
        self._written = stop

    def write_answers(self, answer_ids: Sequence[Sequence[int]],
                      texts: Sequence[str]) -> None:
        """Each row's whole answer (its token ids after the prompt) and text: the values
        are the distinct token sequences, sorted; a row keeps its value's index and its
        first token's id."""
        if len(answer_ids) != self.n_rows or len(texts) != self.n_rows:
            raise ValueError(f"{self.path}: {len(answer_ids)} answers and {len(texts)} "
                             f"answer texts for {self.n_rows} rows")
        values, index = value_classes(answer_ids)
        text_of = {tuple(int(x) for x in a): str(t) for a, t in zip(answer_ids, texts, strict=True)}
        f = self.file
        f["answer"] = np.asarray(index, np.int64)
        f["answer_token_id"] = np.array([a[0] for a in answer_ids], np.int64)
        f.create_dataset("answer_values", data=[text_of[v] for v in values],
                         dtype=h5py.string_dtype())
        f["value_token_ids"] = np.fromiter((t for v in values for t in v), np.int64)
        f["value_token_offsets"] = np.cumsum([0, *map(len, values)], dtype=np.int64)


def write_activation_file(path: str | Path, layers: dict[int, np.ndarray], *,
                          relation: np.ndarray, person: np.ndarray, split: np.ndarray,
                          template: np.ndarray, template_heldout: np.ndarray,
                          relation_names: Sequence[str],
                          answer_ids: Sequence[Sequence[int]], answer_texts: Sequence[str],
                          n_blocks: int | None = None,
                          dtype: str = "float32", **attrs: Any) -> Path:
    """A whole activation file from arrays in memory (tests, benchmarks, small studies);
    `answer_ids`, `answer_texts`: each row's answer tokens and text (see write_answers)."""
    order = sorted(layers)
    first = layers[order[0]]
    n_blocks = n_blocks if n_blocks is not None else sum(1 for k in order if k >= 0)
    with ActivationWriter(path, first.shape[0], first.shape[1], order, n_blocks, dtype,
                          **attrs) as writer:
        writer.write_labels(relation=relation, person=person, split=split, template=template,
                            template_heldout=template_heldout, relation_names=relation_names)
        writer.write_rows(0, np.stack([layers[k] for k in order]))
        writer.write_answers(answer_ids, answer_texts)
    return Path(path)
