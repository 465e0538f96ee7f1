"""The straightforward training step the benchmark compares against.

The seed's losses written literally, as a first implementation would: a DataLoader over
the HDF5 activations, the explicit correlation matrix (free x free for indep, skipped
above 10,000 free slots as the seed does; relation x free for ortho), a `.item()` per
loss per step for logging, PyTorch's default (non-fused) AdamW. The model and its
initial weights are the package's, so only the step differs.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_writer import write_activation_file
from supervised_sae.runs import RUN_KINDS
from supervised_sae.sae.model import SupervisedSAE
from supervised_sae.train.trainer import train_only_owned

SEED_INDEP_LIMIT = 10_000
DEFAULT_WEIGHTS = SaeConfig.default().weights


class ActivationRows(torch.utils.data.Dataset):
    """One row of one layer of an activation file per item, read from HDF5."""

    def __init__(self, path: Path, layer: int):
        self.path, self.layer, self.file = path, layer, None
        with h5py.File(path, "r") as f:
            self.n = len(f["relation"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        f = self.file
        return (torch.from_numpy(f[f"layers/{self.layer}"][i]), int(f["relation"][i]),
                int(f["answer"][i]))


def write_random_activations(path: Path, rows: int, d_model: int, n_answers: int) -> None:
    """Random rows and labels in the workflow's activation layout (the store's writer)."""
    rng = np.random.default_rng(0)
    answer = rng.integers(0, n_answers, rows)
    write_activation_file(
        path, {0: rng.standard_normal((rows, d_model), dtype=np.float32)},
        relation=rng.integers(0, 6, rows), person=np.arange(rows), split=np.zeros(rows),
        template=np.zeros(rows), template_heldout=np.zeros(rows, bool),
        relation_names=[f"r{k}" for k in range(6)], answer_ids=[[int(a)] for a in answer],
        answer_texts=[f"a{a}" for a in answer])


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """rho between every column of a and every column of b (explicit matrix)."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    norms = torch.sqrt((ac**2).sum(0))[:, None] * torch.sqrt((bc**2).sum(0))[None, :]
    return (ac.t() @ bc) / (norms + 1e-8)


def literal_losses(sae: SupervisedSAE, x, relation, answer, mode: str) -> dict:
    n_free = sae.n_free
    z = torch.relu(x @ sae.W_enc + sae.b_enc)
    x_hat = z @ sae.W_dec + sae.b_dec
    components = RUN_KINDS[mode].components
    z_free, z_rel = z[:, :n_free], z[:, n_free:]
    losses = {"recon": ((x - x_hat) ** 2).sum(1).mean()}
    if "sparse" in components:
        losses["sparse"] = z.abs().mean()
    if "align" in components:
        onehot = F.one_hot(relation, sae.n_relations).float()
        losses["align"] = ((z_rel - onehot) ** 2).sum(1).mean()
    if "indep" in components and n_free <= SEED_INDEP_LIMIT:
        rho = correlation(z_free, z_free)
        losses["indep"] = (rho**2).sum() - (torch.diagonal(rho) ** 2).sum()
    if "ortho" in components:
        losses["ortho"] = (correlation(z_rel, z_free) ** 2).sum()
    if "value" in components:
        free_part = z_free @ sae.W_dec[:n_free]
        logits = sum(z_rel[:, r : r + 1] * (free_part @ sae.head.V[r] + sae.head.V_bias[r])
                     for r in range(sae.n_relations))
        losses["value"] = F.cross_entropy(logits, answer)
    if mode == "separate_value":
        losses = {"value": losses["value"]}
    return losses


class ReferenceTrainer:
    """Iterates a DataLoader forever; `step()` runs one literal training step."""

    def __init__(self, sae: SupervisedSAE, mode: str, h5_path: Path, batch: int,
                 device: torch.device):
        self.sae, self.mode, self.device = sae, mode, device
        params = train_only_owned(sae, mode)
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        self.loader = torch.utils.data.DataLoader(ActivationRows(h5_path, 0), batch_size=batch,
                                                  shuffle=True, drop_last=True)
        self.batches = iter(self.loader)
        self.history: list[dict[str, float]] = []

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        x, relation, answer = (t.to(self.device) for t in self.next_batch())
        losses = literal_losses(self.sae, x, relation, answer, self.mode)
        total = sum(DEFAULT_WEIGHTS[k] * v for k, v in losses.items())
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        self.history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
