"""Reading the activation store: one layer as tensors, and its fingerprint.

Depends on h5py, numpy and torch only, so training, evaluation and probes read
activations without importing each other or transformers. The layout: `store_layout`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from supervised_sae.data.store_layout import (
    FINGERPRINT_ATTR,
    ActivationFileError,
    check_finite,
    open_activation_file,
)
from supervised_sae.layers import layer_name


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
    answer: torch.Tensor  # index into answer_values: the whole answer
    split: torch.Tensor  # 0 train people, 1 test people, 2 validation people
    heldout: torch.Tensor  # question template held out of training
    person: torch.Tensor
    answer_token_id: torch.Tensor  # the LM's token id of each answer's first token
    relation_names: list[str]
    answer_values: list[str]  # each value's text
    value_tokens: list[tuple[int, ...]]  # each value's token ids after a prompt
    layer: int
    n_layers: int
    fingerprint: str  # content hash of this layer's activations
    prompts_sha256: str | None = None  # hash of the prompts table it was extracted from
    lm_sha256: str | None = None  # hash of the LM's weights it was extracted with
    source: str = ""  # the activation file it was read from

    @property
    def d_model(self) -> int:
        return self.x.shape[1]

    def answer_vocab_ids(self) -> list[int]:
        """Each value's first token id: what a read-out of one token (the logit lens, the
        `lens` head) scores it by. Values may share one (see first_token_identifies)."""
        return [v[0] for v in self.value_tokens]

    def first_token_identifies(self) -> torch.Tensor:
        """Per row: no other value starts with its answer's first token, so a read-out
        of one token can name it (the rows such read-outs are scored on)."""
        return first_token_unique(self.value_tokens).to(self.answer.device)[self.answer]

    def answer_unseen_in_training(self) -> torch.Tensor:
        """Per row: its answer never occurs as a training label (train people, seen
        templates) for its relation, so only a read-out that generalises can name it."""
        n = len(self.answer_values)
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


def first_token_unique(values: list[tuple[int, ...]]) -> torch.Tensor:
    """Per value (its token ids): no other value starts with its first token."""
    firsts = torch.tensor([v[0] for v in values], dtype=torch.long)
    _, inverse, counts = torch.unique(firsts, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else s for s in ds[:]]


def value_token_lists(f: h5py.File) -> list[tuple[int, ...]]:
    """Each value's token ids, from the flat ids and their offsets."""
    ids, offsets = f["value_token_ids"][:].tolist(), f["value_token_offsets"][:].tolist()
    return [tuple(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


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
    """One layer's activations and labels, after checking the file's layout and values
    (one open of the file and one read of the layer for both)."""
    with open_activation_file(path, [layer], scan_values=False) as f:
        def labels(key: str) -> torch.Tensor:
            return torch.from_numpy(f[key][:]).long().to(device)

        stored_prompts, stored_lm = f.attrs.get("prompts_sha256"), f.attrs.get("lm_sha256")
        x = f[f"layers/{layer_name(layer)}"][:]
        check_finite(x, path, layer)
        return LayerData(
            x=torch.from_numpy(x.astype(np.float32, copy=False)).to(device),
            relation=labels("relation"), answer=labels("answer"), split=labels("split"),
            heldout=torch.from_numpy(f["template_heldout"][:].astype(bool)).to(device),
            person=labels("person"), answer_token_id=labels("answer_token_id"),
            relation_names=_strings(f["relation_names"]),
            answer_values=_strings(f["answer_values"]),
            value_tokens=value_token_lists(f),
            layer=layer, n_layers=int(f.attrs["n_layers"]),
            fingerprint=layer_fingerprint(f, layer),
            prompts_sha256=None if stored_prompts is None else str(stored_prompts),
            lm_sha256=None if stored_lm is None else str(stored_lm), source=str(path),
        )
