"""Reading the activation file: its layout check, one layer as tensors, its fingerprint.

Depends on h5py, numpy and torch only, so training, evaluation and probes can read
activations without importing each other or transformers. The layout is written by
`activations.extract_activations` and described in its docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from supervised_sae.layers import EMBEDDINGS, layer_name

FINGERPRINT_ATTR = "sha256"  # per-layer dataset attribute: hash of its rows, in order


class ActivationFileError(ValueError):
    """An activation file that does not follow the layout; the message says where."""


LABELS = {"relation": "i", "answer": "i", "answer_token_id": "i", "person": "i",
          "split": "i", "template": "i", "template_heldout": "b"}


def check_activation_file(path: str | Path, layers: Sequence[int] | None = None,
                          chunk_rows: int = 65_536) -> None:
    """Check datasets, shapes, dtypes, label ranges and finiteness (in row chunks) of an
    activation file, before any training reads it."""
    path = Path(path)
    if not path.is_file():
        raise ActivationFileError(f"{path}: activation file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ActivationFileError(f"{path}: not a readable HDF5 file (truncated or another "
                                  f"format?): {err}") from err
    with f:
        for key in ("n_layers", "d_model"):
            if key not in f.attrs:
                raise ActivationFileError(f"{path}: attribute {key!r} missing")
        n_layers, d_model = int(f.attrs["n_layers"]), int(f.attrs["d_model"])
        missing = [k for k in [*LABELS, "relation_names", "answer_tokens"] if k not in f]
        missing += [f"layers/{k}" for k in range(n_layers) if f"layers/{k}" not in f]
        if missing:
            raise ActivationFileError(f"{path}: dataset(s) {missing} missing")
        n = f["relation"].shape[0]
        for key, kind in LABELS.items():
            ds = f[key]
            if ds.shape != (n,) or ds.dtype.kind not in (kind, "u" if kind == "i" else kind):
                raise ActivationFileError(
                    f"{path}: dataset {key!r} has shape {ds.shape} and dtype {ds.dtype}; "
                    f"expected shape ({n},) and an {'integer' if kind == 'i' else 'bool'} dtype")
        bounds = {"relation": len(f["relation_names"]), "answer": len(f["answer_tokens"]),
                  "split": 3}
        for key, upper in bounds.items():
            values = f[key][:]
            bad = np.nonzero((values < 0) | (values >= upper))[0]
            if len(bad):
                raise ActivationFileError(
                    f"{path}: {key}[{bad[0]}] = {values[bad[0]]} is out of range; expected "
                    f"0..{upper - 1}")
        if layers is None:  # the whole file: every block, and the embeddings if stored
            layers = [*([EMBEDDINGS] if f"layers/{layer_name(EMBEDDINGS)}" in f else []),
                      *range(n_layers)]
        for k in layers:
            if k == EMBEDDINGS and f"layers/{layer_name(k)}" not in f:
                raise ActivationFileError(
                    f"{path}: the embedding output (layers/{layer_name(k)}) was asked for, "
                    "but the file has none; extract the activations again with this version")
            if not EMBEDDINGS <= k < n_layers:
                raise ActivationFileError(f"{path}: layer {k} requested; the file has layers "
                                          f"0..{n_layers - 1} and {layer_name(EMBEDDINGS)!r}")
            ds = f[f"layers/{layer_name(k)}"]
            if ds.shape != (n, d_model) or ds.dtype.kind != "f":
                raise ActivationFileError(
                    f"{path}: layers/{layer_name(k)} has shape {ds.shape} and dtype "
                    f"{ds.dtype}; expected ({n}, {d_model}) floats")
            for start in range(0, n, chunk_rows):
                block = ds[start : start + chunk_rows]
                bad_rows = np.nonzero(~np.isfinite(block).all(axis=1))[0]
                if len(bad_rows):
                    row = start + int(bad_rows[0])
                    raise ActivationFileError(
                        f"{path}: layers/{layer_name(k)} row {row} holds NaN or Inf; every "
                        "activation must be finite")


def layer_fingerprint(f: h5py.File, layer: int, chunk_rows: int = 65_536) -> str:
    """The layer's content hash: stored at extraction, or computed the same way for a
    file written elsewhere. It changes whenever the activations do, even when the file
    name, prompts and model path stay the same (a retrained LM, another model)."""
    ds = f[f"layers/{layer_name(layer)}"]
    stored = ds.attrs.get(FINGERPRINT_ATTR)
    if stored is not None:
        return str(stored)
    digest = hashlib.sha256()  # the rows' bytes in file order, as extraction hashes them
    for start in range(0, ds.shape[0], chunk_rows):
        digest.update(np.ascontiguousarray(ds[start : start + chunk_rows]))
    return digest.hexdigest()


@dataclass
class LayerData:
    """One layer's activations and labels, as tensors on one device."""

    x: torch.Tensor
    relation: torch.Tensor
    answer: torch.Tensor
    split: torch.Tensor  # 0 train people, 1 test people, 2 validation people
    heldout: torch.Tensor  # question template held out of training
    person: torch.Tensor
    answer_token_id: torch.Tensor  # the LM's token id of each answer's first token
    relation_names: list[str]
    answer_tokens: list[str]
    layer: int
    n_layers: int
    fingerprint: str  # content hash of this layer's activations

    @property
    def d_model(self) -> int:
        return self.x.shape[1]

    def answer_vocab_ids(self) -> list[int]:
        """The LM token id of each answer class (classes are the sorted distinct ids)."""
        ids = torch.unique(self.answer_token_id).tolist()
        if len(ids) != len(self.answer_tokens):
            raise ActivationFileError(
                f"layer {self.layer}: {len(ids)} distinct answer_token_id values but "
                f"{len(self.answer_tokens)} answer_tokens; they must match one to one")
        return ids

    def answer_unseen_in_training(self) -> torch.Tensor:
        """Per row: its answer never occurs as a training label (train people, seen
        templates) for its relation, so only a read-out that generalises can name it."""
        n = len(self.answer_tokens)
        keys = self.relation * n + self.answer
        train = self.slices()["train_seen"]
        return ~torch.isin(keys, torch.unique(keys[train]))

    def validation_rows(self) -> torch.Tensor:
        """Validation people, seen templates: unseen by the LM's QA training like test
        people; they choose SAE training epochs and appear in no reported slice."""
        return ((self.split == 2) & ~self.heldout).nonzero().squeeze(1)

    def slices(self) -> dict[str, torch.Tensor]:
        """Row indices: the training slice and the four evaluation slices (validation
        people are in none of them)."""
        s, h = self.split, self.heldout
        masks = {"train_seen": (s == 0) & ~h, "train_heldout": (s == 0) & h,
                 "test_seen": (s == 1) & ~h, "test_heldout": (s == 1) & h}
        return {k: m.nonzero().squeeze(1) for k, m in masks.items()}


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else s for s in ds[:]]


def file_layer_count(path: str | Path) -> int:
    """How many layers the activation file holds (for device placement, before the job
    loads its layer; `load_layer` checks the whole layout then)."""
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["n_layers"])
    except (OSError, KeyError) as err:
        raise ActivationFileError(f"{path}: cannot read the attribute n_layers of an "
                                  f"activation file: {err}") from err


def load_layer(path: str | Path, layer: int, device: str | torch.device = "cpu") -> LayerData:
    """One layer's activations and labels, after checking the file's layout and values."""
    check_activation_file(path, [layer])
    with h5py.File(path, "r") as f:
        def labels(key: str) -> torch.Tensor:
            return torch.from_numpy(f[key][:]).long().to(device)

        return LayerData(
            x=torch.from_numpy(f[f"layers/{layer_name(layer)}"][:].astype(np.float32)
                               ).to(device),
            relation=labels("relation"), answer=labels("answer"), split=labels("split"),
            heldout=torch.from_numpy(f["template_heldout"][:].astype(bool)).to(device),
            person=labels("person"), answer_token_id=labels("answer_token_id"),
            relation_names=_strings(f["relation_names"]),
            answer_tokens=_strings(f["answer_tokens"]),
            layer=layer, n_layers=int(f.attrs["n_layers"]),
            fingerprint=layer_fingerprint(f, layer),
        )
