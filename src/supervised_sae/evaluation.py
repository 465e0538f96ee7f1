"""Evaluate one trained SAE: slot binding, value read-out, reconstruction, correlations,
splicing into the LM, and swap controllability, on four slices of the prompts.

Slices: train / held-out (test) people x seen / held-out question templates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .activation_file import LayerData
from .losses import normalized_columns
from .model import Readout, SupervisedSAE, apply_readout
from .runs import run_kind

log = logging.getLogger(__name__)

SLICES = ("train_seen", "train_heldout", "test_seen", "test_heldout")


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


def binding_accuracy(confusion: np.ndarray) -> float:
    """Diagonal accuracy of a relation x slot confusion matrix under the best one-to-one
    assignment of slots to relations (invariant to a permutation of slots)."""
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / max(confusion.sum(), 1))


@torch.no_grad()
def correlation_summary(z_free: torch.Tensor, z_rel: torch.Tensor) -> dict[str, float]:
    """Mean rho^2 among free slots and between relation and free slots, exact over the
    given rows, through the Gram identity (an N x N matrix, never D x D)."""
    z = torch.cat([z_free, z_rel], 1)
    z_hat = normalized_columns(z.double() if z.numel() < 5e7 else z.float())
    free, rel = z_hat[:, : z_free.shape[1]], z_hat[:, z_free.shape[1] :]
    gram_free = free @ free.t()
    col = (free * free).sum(0)
    d, r = free.shape[1], rel.shape[1]
    among = ((gram_free * gram_free).sum() - (col * col).sum()) / max(d * (d - 1), 1)
    across = ((rel @ rel.t()) * gram_free).sum() / max(d * r, 1)
    return {"mean_rho2_free_free": float(among), "mean_rho2_relation_free": float(across)}


@torch.no_grad()
def sae_slice_metrics(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                      view: SlotView, with_values: bool, majority: torch.Tensor,
                      relation_names: Sequence[str], rho_rows: int = 4096,
                      chunk: int = 1024, readout: Readout | None = None) -> dict[str, Any]:
    """Every per-slice number of one SAE (see module docstring). With the LM's
    `readout`, also the logit lens of the reconstruction."""
    n_rel = len(relation_names)
    dev = data.x.device
    slot_index = torch.tensor(view.slots, device=dev)
    confusion = torch.zeros(n_rel, n_rel, device=dev)
    act_sums = torch.zeros(n_rel, n_rel, device=dev)
    exact = torch.zeros(n_rel, device=dev)
    value_hits = torch.zeros(n_rel, device=dev)
    unseen = data.answer_unseen_in_training()
    # hits of the value heads and of the logit lens: all rows, rows with unseen answers
    answer_hits = {"value": torch.zeros(2, device=dev), "lens": torch.zeros(2, device=dev)}
    counts = torch.zeros(n_rel, device=dev)
    sse = torch.zeros((), dtype=torch.float64, device=dev)
    l0 = torch.zeros((), dtype=torch.float64, device=dev)
    fired = torch.zeros(model.n_free, dtype=torch.bool, device=dev)
    x_rows = data.x[rows]
    centred_ss = ((x_rows - x_rows.mean(0)) ** 2).sum().double()
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        x, rel = data.x[idx], data.relation[idx]
        out = model(x, with_values=with_values)
        z_free, z_slots = out["z"][:, : model.n_free], out["z"][:, slot_index]
        onehot = torch.nn.functional.one_hot(rel, n_rel).float()
        confusion.index_add_(0, rel, torch.nn.functional.one_hot(z_slots.argmax(1), n_rel)
                             .float())
        act_sums.index_add_(0, rel, z_slots)
        exact.index_add_(0, rel, ((z_slots - onehot).abs() < 0.5).all(1).float())
        counts += torch.bincount(rel, minlength=n_rel)
        answer, new = data.answer[idx], unseen[idx].float()
        if with_values:
            hit = (out["logits"].argmax(1) == answer).float()
            value_hits.index_add_(0, rel, hit)
            answer_hits["value"] += torch.stack([hit.sum(), (hit * new).sum()])
        if readout is not None:
            hit = (apply_readout(readout, out["x_hat"]).argmax(1) == answer).float()
            answer_hits["lens"] += torch.stack([hit.sum(), (hit * new).sum()])
        sse += ((x - out["x_hat"]) ** 2).sum().double()
        l0 += (z_free > 0).sum().double()
        fired |= (z_free > 0).any(0)
    n = len(rows)
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
        "binding_accuracy": binding_accuracy(conf),
        "relation_slot_mean_activation": (act_sums / c[:, None]).tolist(),
        "confusion": conf.astype(int).tolist(),
        "reconstruction_mse": float(sse / (n * data.d_model)),
        "fvu": float(sse / centred_ss.clamp_min(1e-12)),
        "l0_free": float(l0 / n),
        "dead_free_fraction": float(1 - fired.float().mean()),
    }
    majority_hits = (majority[data.relation[rows]] == data.answer[rows]).float()
    result["majority_answer_accuracy"] = float(majority_hits.mean())
    n_unseen = float(unseen[rows].sum())
    result["n_unseen_answers"] = int(n_unseen)
    if with_values:
        result["value_accuracy"] = float(value_hits.sum() / n)
        result["value_accuracy_per_relation"] = per_rel(value_hits)
        if n_unseen:
            result["value_accuracy_unseen_answers"] = float(answer_hits["value"][1] / n_unseen)
    if readout is not None:
        result["logit_lens_reconstruction_accuracy"] = float(answer_hits["lens"][0] / n)
        if n_unseen:
            result["logit_lens_reconstruction_accuracy_unseen_answers"] = float(
                answer_hits["lens"][1] / n_unseen)
    sample = rows[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rho_rows]
                  .to(dev)]
    z = model.encode(data.x[sample])
    others = torch.ones(model.n_free, dtype=torch.bool, device=dev)
    if not view.supervised:  # the matched free slots play the relation slots' part
        others[slot_index] = False
    result.update(correlation_summary(z[:, : model.n_free][:, others], z[:, slot_index]))
    result["rho_rows"] = int(len(sample))
    return result


def majority_answers(data: LayerData, rows: torch.Tensor, n_relations: int) -> torch.Tensor:
    """Most common answer per relation among `rows` (the value-accuracy floor)."""
    out = torch.zeros(n_relations, dtype=torch.long, device=data.x.device)
    for r in range(n_relations):
        answers = data.answer[rows][data.relation[rows] == r]
        if len(answers):
            out[r] = torch.mode(answers).values
    return out


# --- LM-side: splicing and steering -------------------------------------------------


@torch.no_grad()
def predictions_with_edit(lm, blocks, layer: int, encoded: Sequence[Sequence[int]],
                          pad_id: int, edit: Callable[[torch.Tensor, slice], torch.Tensor]
                          | None, device: str | torch.device, batch_size: int = 256
                          ) -> torch.Tensor:
    """Greedy next token after each row, with block `layer`'s output at the row's last
    position replaced by edit(h_last, rows) (None: clean)."""
    from .lm import next_token_ids

    if edit is None:
        return next_token_ids(lm, encoded, pad_id, device, batch_size)
    state: dict[str, Any] = {}

    def remember(last: torch.Tensor, rows: slice) -> None:
        state["last"], state["rows"] = last, rows

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        ar = torch.arange(len(state["last"]), device=hidden.device)
        h_last = hidden[ar, state["last"]]
        hidden[ar, state["last"]] = edit(h_last.float(), state["rows"]).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = blocks[layer].register_forward_hook(hook)
    try:
        return next_token_ids(lm, encoded, pad_id, device, batch_size, before_batch=remember)
    finally:
        handle.remove()


@torch.no_grad()
def swap_controllability(sae: SupervisedSAE, view: SlotView, lm, blocks, layer: int,
                         encoded: Sequence[Sequence[int]], pad_id: int,
                         relation: np.ndarray, person: np.ndarray,
                         answer_token: dict[tuple[int, int], int], rows: np.ndarray,
                         alphas: Sequence[float], relation_names: Sequence[str],
                         device, batch_size: int = 256) -> dict[str, Any]:
    """Steer each prompt about relation A toward every other relation B and count how
    often the LM then answers with the person's value of B.

    decoder: h + alpha * beta * d_B, beta = |h| / |d_B|, d_B the slot's decoder row.
    latent:  encode h, zero slot A, set slot B to alpha, decode, and add back the SAE's
             reconstruction error so only the edit changes h.
    """
    n_rel = len(relation_names)
    pairs = [(i, b) for i in rows for b in range(n_rel) if b != relation[i]]
    if not pairs:
        return {}
    prompt_of = np.array([i for i, _ in pairs])
    src = torch.tensor(relation[prompt_of], device=device)
    dst = torch.tensor([b for _, b in pairs], device=device)
    target = torch.tensor([answer_token[(int(person[i]), b)] for i, b in pairs], device=device)
    pair_encoded = [encoded[i] for i in prompt_of]
    slot = torch.tensor(view.slots, device=device)
    directions = sae.W_dec[slot[dst]]  # [pairs, d]
    result: dict[str, Any] = {"alphas": list(alphas), "n_pairs": len(pairs)}
    for variant in ("decoder", "latent"):
        rates, matrices = [], []
        for alpha in alphas:
            def edit(h, rs, alpha=alpha, variant=variant):
                if variant == "decoder":
                    d = directions[rs]
                    beta = h.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True)
                    return h + alpha * beta * d
                z = sae.encode(h)
                error = h - sae.decode(z)
                ar = torch.arange(len(h), device=h.device)
                z[ar, slot[src[rs]]] = 0.0
                z[ar, slot[dst[rs]]] = alpha
                return sae.decode(z) + error

            pred = predictions_with_edit(lm, blocks, layer, pair_encoded, pad_id, edit, device,
                                         batch_size)
            hit = (pred == target).float()
            matrix = torch.zeros(n_rel, n_rel, device=device)
            count = torch.zeros(n_rel, n_rel, device=device)
            matrix.index_put_((src, dst), hit, accumulate=True)
            count.index_put_((src, dst), torch.ones_like(hit), accumulate=True)
            rates.append(float(hit.mean()))
            matrices.append((matrix / count.clamp_min(1)).tolist())
        best = int(np.argmax(rates))
        result[variant] = {"success_rate": rates, "best_alpha": alphas[best],
                           "best_success_rate": rates[best], "matrix_at_best_alpha":
                           matrices[best]}
    return result


def answer_token_lookup(data_person: np.ndarray, data_relation: np.ndarray,
                        token_ids: np.ndarray) -> dict[tuple[int, int], int]:
    return {(int(p), int(r)): int(t)
            for p, r, t in zip(data_person, data_relation, token_ids, strict=True)}


def sample_rows(rows: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    if len(rows) <= limit:
        return rows
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:limit]
    return rows[pick.sort().values.to(rows.device)]


def evaluate_sae(sae_path: str | Path, activations: str | Path, prompts_path: str | Path,
                 model_dir: str | Path, layer: int, *, alphas: Sequence[float],
                 swap_prompts_per_relation: int = 20, lm_prompts_per_slice: int = 2000,
                 rho_rows: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """All metrics of one run (a supervised mode or the unsupervised baseline)."""
    from .activation_file import load_layer
    from .activations import transformer_blocks
    from .lm import final_readout, load_lm
    from .model import load_sae
    from .prompts import read_prompts
    from .tokenization import encode

    data = load_layer(activations, layer, device)
    sae, meta = load_sae(sae_path, device)
    sae.eval()
    person = data.person.cpu().numpy()
    token_ids = data.answer_token_id.cpu().numpy()
    relation = data.relation.cpu().numpy()
    names = data.relation_names
    slices = data.slices()
    supervised = sae.n_relations > 0
    view = (relation_slots(sae) if supervised
            else match_free_slots(sae, data, slices["train_seen"], len(names)))
    with_values = run_kind(meta["stage"]).has_value_heads
    majority = majority_answers(data, slices["train_seen"], len(names))
    lm, tokenizer = load_lm(model_dir, device)
    if lm.config.hidden_size != data.d_model:
        raise ValueError(f"{model_dir}: hidden size {lm.config.hidden_size}, but {activations} "
                         f"holds {data.d_model}-dimensional activations: not from this model")
    readout = final_readout(lm, data.answer_vocab_ids(), model_dir).to(device)
    result: dict[str, Any] = {
        "mode": meta.get("mode"), "layer": layer, "relation_names": list(names),
        "relation_slots": view.slots, "supervised": supervised,
        "value_heads": with_values if supervised else False,
        "slices": {name: sae_slice_metrics(sae, data, rows, view, with_values, majority, names,
                                           rho_rows, readout=readout)
                   for name, rows in slices.items() if len(rows)},
    }
    if not with_values:
        result["value_note"] = ("no value accuracy: this run has no trained value heads"
                                if supervised else "no value heads in the unsupervised SAE")
    table = read_prompts(prompts_path, expected_rows=len(data.x))
    encoded = encode(tokenizer, table["prompt"])
    blocks = transformer_blocks(lm)
    targets = data.answer_token_id

    def splice(h, _rows):
        return sae.decode(sae.encode(h))

    result["spliced"] = {}
    for name, rows in slices.items():
        picked = sample_rows(rows, lm_prompts_per_slice).cpu().numpy()
        if not len(picked):
            continue
        sub = [encoded[i] for i in picked]
        clean = predictions_with_edit(lm, blocks, layer, sub, tokenizer.pad_token_id, None,
                                      device)
        spliced = predictions_with_edit(lm, blocks, layer, sub, tokenizer.pad_token_id, splice,
                                        device)
        result["spliced"][name] = {
            "n_lm_prompts": int(len(picked)),
            "clean_accuracy": float((clean == targets[picked]).float().mean()),
            "spliced_accuracy": float((spliced == targets[picked]).float().mean())}
    test_rows = slices["test_seen"].cpu().numpy()
    swap_rows = np.concatenate([test_rows[relation[test_rows] == r][:swap_prompts_per_relation]
                                for r in range(len(names))])
    result["swap"] = swap_controllability(
        sae, view, lm, blocks, layer, encoded, tokenizer.pad_token_id, relation, person,
        answer_token_lookup(person, relation, token_ids), swap_rows, list(alphas), names,
        device)
    return result
