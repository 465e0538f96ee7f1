"""Slot metrics of one SAE on the stored activations: binding, value read-out,
reconstruction, sparsity and correlations, per slice.

Slices: train / held-out (test) people x seen / held-out question templates. Each
slice's rows are encoded once; every number of the slice reads those codes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from supervised_sae.config.spec import EvaluationConfig
from supervised_sae.data.store_reader import LayerData
from supervised_sae.lm.readout import Readout, apply_readout
from supervised_sae.sae.losses import normalized_columns
from supervised_sae.sae.model import SupervisedSAE, decided_slot

log = logging.getLogger(__name__)


@dataclass
class SlotView:
    """Which slots stand for the relations: the relation slots of a supervised SAE, or
    the free slots matched to relations after training (unsupervised baseline)."""

    slots: list[int]  # slot index per relation, in relation order
    supervised: bool


def relation_slots(model: SupervisedSAE) -> SlotView:
    return SlotView(list(range(model.n_free, model.n_free + model.n_relations)), True)


@torch.no_grad()
def match_free_slots(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                     n_relations: int, chunk: int = 1024) -> SlotView:
    """Best free slot per relation: maximise the summed (mean on the relation minus mean
    elsewhere) over a one-to-one assignment of relations to slots."""
    sums = torch.zeros(n_relations, model.n_free, device=data.x.device)
    counts = torch.zeros(n_relations, device=data.x.device)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        z = model.encode(data.x[idx])[:, : model.n_free]
        sums.index_add_(0, data.relation[idx], z)
        counts += torch.bincount(data.relation[idx], minlength=n_relations)
    means = sums / counts.clamp_min(1)[:, None]
    others = (sums.sum(0, keepdim=True) - sums) / (counts.sum() - counts).clamp_min(1)[:, None]
    score = (means - others).cpu().numpy()
    rel, slot = linear_sum_assignment(-score)
    order = np.argsort(rel)
    return SlotView([int(s) for s in slot[order]], False)


def slot_assignment(confusion: np.ndarray) -> list[int]:
    """The one-to-one relation -> slot assignment that maximises the confusion matrix's
    diagonal (binding is invariant to a permutation of slots)."""
    rows, cols = linear_sum_assignment(-confusion)
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def binding_accuracy(confusion: np.ndarray, assignment: Sequence[int], n: int) -> float:
    """Share of the slice's n rows whose decided slot is the one `assignment` gives their
    relation. Rows with no decided slot (a tie, all zero) are absent from the confusion
    matrix and so count as wrong."""
    return float(sum(confusion[r, s] for r, s in enumerate(assignment)) / max(n, 1))


@torch.no_grad()
def correlation_summary(z_free: torch.Tensor, z_rel: torch.Tensor) -> dict[str, float]:
    """Mean rho^2 among free slots and between relation and free slots, exact over the
    given rows, through the Gram identity: sum_jk rho_jk^2 = |Z^T Z|_F^2 = |Z Z^T|_F^2,
    so the smaller of the N x N and D x D products is formed. Means are over free slots
    alive in these rows (a dead slot has rho = 0 with everything and would dilute them);
    the dead share is reported beside them."""
    alive = (z_free > 0).any(0)
    z_free = z_free[:, alive]
    z = torch.cat([z_free, z_rel], 1)
    z_hat = normalized_columns(z.double() if z.numel() < 5e7 else z.float())
    free, rel = z_hat[:, : z_free.shape[1]], z_hat[:, z_free.shape[1] :]
    col = (free * free).sum(0)
    (n, d), r = free.shape, rel.shape[1]
    if d < n:  # slots x slots: fewer products than rows x rows
        gram_free = free.t() @ free
        across_sum = ((rel.t() @ free) ** 2).sum()
    else:
        gram_free = free @ free.t()
        across_sum = ((rel @ rel.t()) * gram_free).sum()
    among = ((gram_free * gram_free).sum() - (col * col).sum()) / max(d * (d - 1), 1)
    across = across_sum / max(d * r, 1)
    return {"mean_rho2_free_free": float(among), "mean_rho2_relation_free": float(across),
            "rho_dead_free_fraction": float(1 - alive.float().mean())}


DENSE_ROWS = 0.1  # a free slot firing on more than this fraction of rows is dense


@torch.no_grad()
def sae_slice_metrics(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                      view: SlotView, with_values: bool, majority: torch.Tensor,
                      relation_names: Sequence[str], rho_rows: int | None = None,
                      chunk: int = 1024, readout: Readout | None = None,
                      assignment: Sequence[int] | None = None) -> dict[str, Any]:
    """Every per-slice number of one SAE (see module docstring). With the LM's
    `readout`, also the logit lens of the reconstruction. `assignment` (relation ->
    slot, fitted on train people and seen templates) scores binding; None fits it on
    this slice (for the training slice itself)."""
    n_rel = len(relation_names)
    dev = data.x.device
    slot_index = torch.tensor(view.slots, device=dev)
    confusion = torch.zeros(n_rel, n_rel, device=dev)
    act_sums = torch.zeros(n_rel, n_rel, device=dev)
    exact = torch.zeros(n_rel, device=dev)
    value_hits = torch.zeros(n_rel, device=dev)
    unseen = data.answer_unseen_in_training()
    # a read-out of one token (the logit lens, the `lens` head: a value's first token)
    # is scored only where that token names one value; other heads on every row
    one_token = data.first_token_identifies().float()
    head_one_token = with_values and model.head.needs_readout
    # hits of the value heads and of the logit lens: all rows, rows with unseen answers
    answer_hits = {"value": torch.zeros(2, device=dev), "lens": torch.zeros(2, device=dev)}
    value_rows = torch.zeros(n_rel, device=dev)  # the rows value accuracy is scored on
    counts = torch.zeros(n_rel, device=dev)
    sse = torch.zeros((), dtype=torch.float64, device=dev)
    l0 = torch.zeros((), dtype=torch.float64, device=dev)
    fired = torch.zeros(model.n_free, dtype=torch.float64, device=dev)  # rows per slot
    x_rows = data.x[rows]
    centred_ss = ((x_rows - x_rows.mean(0)) ** 2).sum().double()
    # the rows of the exact correlation sample, in the sample's (random) order; their
    # codes are kept as the chunks pass, not encoded again
    n = len(rows)
    rho_rows = rho_rows or EvaluationConfig().rho_rows  # the config's default
    sample_at = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rho_rows]
    slot_of_row = torch.full((n,), -1, dtype=torch.long)
    slot_of_row[sample_at] = torch.arange(len(sample_at))
    slot_of_row = slot_of_row.to(dev)
    sample_codes = torch.empty(len(sample_at), model.n_free + model.n_relations, device=dev)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        x, rel = data.x[idx], data.relation[idx]
        out = model(x, with_values=with_values)
        keep = slot_of_row[start : start + len(idx)]
        sample_codes[keep[keep >= 0]] = out["z"][keep >= 0]
        z_free, z_slots = out["z"][:, : model.n_free], out["z"][:, slot_index]
        onehot = torch.nn.functional.one_hot(rel, n_rel).float()
        decided = decided_slot(z_slots)
        confusion.index_add_(0, rel, torch.nn.functional.one_hot(decided + 1, n_rel + 1)
                             [:, 1:].float())  # undecided rows (-1) add nothing
        act_sums.index_add_(0, rel, z_slots)
        exact.index_add_(0, rel, ((z_slots - onehot).abs() < 0.5).all(1).float())
        counts += torch.bincount(rel, minlength=n_rel)
        answer, new, named = data.answer[idx], unseen[idx].float(), one_token[idx]
        if with_values:
            scored = named if head_one_token else torch.ones_like(named)
            hit = (out["logits"].argmax(1) == answer).float() * scored
            value_hits.index_add_(0, rel, hit)
            value_rows.index_add_(0, rel, scored)
            answer_hits["value"] += torch.stack([hit.sum(), (hit * new).sum()])
        if readout is not None:
            hit = (apply_readout(readout, out["x_hat"]).argmax(1) == answer).float() * named
            answer_hits["lens"] += torch.stack([hit.sum(), (hit * new).sum()])
        sse += ((x - out["x_hat"]) ** 2).sum().double()
        l0 += (z_free > 0).sum().double()
        fired += (z_free > 0).sum(0).double()
    c = counts.clamp_min(1)

    def per_rel(t: torch.Tensor) -> dict[str, float]:
        return {r: float(v) for r, v in zip(relation_names, (t / c).tolist(), strict=True)}

    conf = confusion.cpu().numpy()
    result: dict[str, Any] = {
        "n": n,
        "slot_accuracy": float(torch.diagonal(confusion).sum() / n),
        "slot_accuracy_per_relation": per_rel(torch.diagonal(confusion)),
        "exact_slot_match": float(exact.sum() / n),
        "exact_slot_match_per_relation": per_rel(exact),
        # the slot assignment fitted on train people / seen templates, not on this slice
        "binding_accuracy": binding_accuracy(conf, assignment or slot_assignment(conf), n),
        # diagnostic: the assignment refitted on this slice (flatters held-out slices)
        "binding_accuracy_refit": binding_accuracy(conf, slot_assignment(conf), n),
        "relation_slot_mean_activation": (act_sums / c[:, None]).tolist(),
        "confusion": conf.astype(int).tolist(),
        "reconstruction_mse": float(sse / (n * data.d_model)),
        "fvu": float(sse / centred_ss.clamp_min(1e-12)),
        "l0_free": float(l0 / n),
        "dead_free_fraction": float((fired == 0).double().mean()),
        # slots that fire on more than 10% of the rows: a sparse code has few
        "dense_free_fraction": float((fired > DENSE_ROWS * n).double().mean()),
    }
    majority_hits = (majority[data.relation[rows]] == data.answer[rows]).float()
    result["majority_answer_accuracy"] = float(majority_hits.mean())
    n_unseen = float(unseen[rows].sum())
    result["n_unseen_answers"] = int(n_unseen)
    n_named, n_unseen_named = float(one_token[rows].sum()), float(
        (one_token[rows] * unseen[rows]).sum())
    # the share of rows a one-token read-out is scored on, printed beside its accuracy
    result["first_token_names_value_share"] = n_named / max(n, 1)
    if with_values:
        n_value, n_value_unseen = ((n_named, n_unseen_named) if head_one_token
                                   else (n, n_unseen))
        result["value_accuracy"] = float(value_hits.sum() / max(n_value, 1))
        result["value_accuracy_per_relation"] = {
            r: float(h / max(k, 1)) for r, h, k in
            zip(relation_names, value_hits.tolist(), value_rows.tolist(), strict=True)}
        if n_value_unseen:
            result["value_accuracy_unseen_answers"] = float(
                answer_hits["value"][1] / n_value_unseen)
    if readout is not None and n_named:
        result["logit_lens_reconstruction_accuracy"] = float(answer_hits["lens"][0] / n_named)
        if n_unseen_named:
            result["logit_lens_reconstruction_accuracy_unseen_answers"] = float(
                answer_hits["lens"][1] / n_unseen_named)
    z = sample_codes
    others = torch.ones(model.n_free, dtype=torch.bool, device=dev)
    if not view.supervised:  # the matched free slots play the relation slots' part
        others[slot_index] = False
    result.update(correlation_summary(z[:, : model.n_free][:, others], z[:, slot_index]))
    result["rho_rows"] = int(len(sample_at))
    return result


def majority_answers(data: LayerData, rows: torch.Tensor, n_relations: int) -> torch.Tensor:
    """Most common answer per relation among `rows` (the value-accuracy floor)."""
    out = torch.zeros(n_relations, dtype=torch.long, device=data.x.device)
    for r in range(n_relations):
        answers = data.answer[rows][data.relation[rows] == r]
        if len(answers):
            out[r] = torch.mode(answers).values
    return out




def typical_slot_values(train_metrics: dict[str, Any], data: LayerData,
                        train_rows: torch.Tensor) -> torch.Tensor:
    """Per relation B, slot B's mean activation on train rows that really ask about B
    (the latent swap's unit: alpha = 1 is as strong as a real question about B), read
    from the train slice's relation-slot means; 1 for a relation without train rows."""
    means = torch.tensor(train_metrics["relation_slot_mean_activation"],
                         device=data.x.device).diagonal()
    counts = torch.bincount(data.relation[train_rows], minlength=len(means))
    return torch.where(counts > 0, means, torch.ones_like(means))
