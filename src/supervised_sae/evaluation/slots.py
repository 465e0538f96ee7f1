"""Evaluate one trained SAE: slot binding, value read-out, reconstruction, correlations,
splicing into the LM, and swap controllability, on four slices of the prompts.

Slices: train / held-out (test) people x seen / held-out question templates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from supervised_sae.data.store_reader import LayerData
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.readout import Readout, apply_readout
from supervised_sae.runs import run_kind
from supervised_sae.sae.losses import normalized_columns
from supervised_sae.sae.model import SupervisedSAE, decided_slot

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
    given rows, through the Gram identity (an N x N matrix, never D x D). Means are over
    free slots alive in these rows (a dead slot has rho = 0 with everything and would
    dilute them); the dead share is reported beside them."""
    alive = (z_free > 0).any(0)
    z_free = z_free[:, alive]
    z = torch.cat([z_free, z_rel], 1)
    z_hat = normalized_columns(z.double() if z.numel() < 5e7 else z.float())
    free, rel = z_hat[:, : z_free.shape[1]], z_hat[:, z_free.shape[1] :]
    gram_free = free @ free.t()
    col = (free * free).sum(0)
    d, r = free.shape[1], rel.shape[1]
    among = ((gram_free * gram_free).sum() - (col * col).sum()) / max(d * (d - 1), 1)
    across = ((rel @ rel.t()) * gram_free).sum() / max(d * r, 1)
    return {"mean_rho2_free_free": float(among), "mean_rho2_relation_free": float(across),
            "rho_dead_free_fraction": float(1 - alive.float().mean())}


@torch.no_grad()
def sae_slice_metrics(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                      view: SlotView, with_values: bool, majority: torch.Tensor,
                      relation_names: Sequence[str], rho_rows: int = 4096,
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
        decided = decided_slot(z_slots)
        confusion.index_add_(0, rel, torch.nn.functional.one_hot(decided + 1, n_rel + 1)
                             [:, 1:].float())  # undecided rows (-1) add nothing
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
        # the slot assignment fitted on train people / seen templates, not on this slice
        "binding_accuracy": binding_accuracy(conf, assignment or slot_assignment(conf), n),
        # diagnostic: the assignment refitted on this slice (flatters held-out slices)
        "binding_accuracy_refit": binding_accuracy(conf, slot_assignment(conf), n),
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
    """Greedy next token after each row, with the residual stream at `layer` (block
    `layer`'s output, or the embeddings for -1) at the row's last position replaced by
    edit(h_last, rows) (None: clean)."""
    from supervised_sae.lm.load import next_token_ids

    if edit is None:
        return next_token_ids(lm, encoded, pad_id, device, batch_size)
    state: dict[str, Any] = {}

    def remember(last: torch.Tensor, rows: slice) -> None:
        state["last"], state["rows"] = last, rows

    def replace_last(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        ar = torch.arange(len(state["last"]), device=hidden.device)
        h_last = hidden[ar, state["last"]]
        hidden[ar, state["last"]] = edit(h_last.float(), state["rows"]).to(hidden.dtype)
        return hidden

    handle = hook_residual(blocks, layer, replace_last)
    try:
        return next_token_ids(lm, encoded, pad_id, device, batch_size, before_batch=remember)
    finally:
        handle.remove()


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a success rate (sound at rates near 0 or 1)."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def swap_rows(data: LayerData, split_rows: torch.Tensor, n_people: int, seed: int = 0
              ) -> np.ndarray:
    """Prompts to steer: up to `n_people` people drawn at random from these rows (all of
    them when there are fewer), and for each of them one prompt per relation, its
    wording drawn at random among the rows' templates."""
    rng = np.random.default_rng(seed)
    rows = split_rows.cpu().numpy()
    person = data.person.cpu().numpy()[rows]
    relation = data.relation.cpu().numpy()[rows]
    people = np.unique(person)
    chosen = rng.permutation(people)[:n_people]
    picked = []
    for p in np.sort(chosen):
        mine = rows[person == p]
        for r in np.unique(relation[person == p]):
            picked.append(rng.choice(mine[relation[person == p] == r]))
    return np.array(sorted(picked), dtype=np.int64)


@torch.no_grad()
def swap_success(sae: SupervisedSAE, view: SlotView, lm, blocks, layer: int,
                 encoded: Sequence[Sequence[int]], pad_id: int, relation: np.ndarray,
                 person: np.ndarray, answer_token: dict[tuple[int, int], int],
                 rows: np.ndarray, alphas: Sequence[float], variant: str,
                 slot_scale: torch.Tensor, n_rel: int, device, batch_size: int = 256
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each alpha: (hit per pair, relation A per pair, relation B per pair) when each
    prompt about A in `rows` is steered toward every other relation B whose value the
    person has, a hit being the LM answering with the person's value of B.

    decoder: h + alpha * beta * d_B, beta = |h| / |d_B|, d_B the slot's decoder row.
    latent:  encode h, zero slot A, set slot B to alpha times its typical value when the
             question is about B (`slot_scale`), decode, and add back the SAE's
             reconstruction error so only the edit changes h.
    """
    pairs = [(i, b) for i in rows for b in range(n_rel)
             if b != relation[i] and (int(person[i]), b) in answer_token]
    if not pairs:
        return []
    prompt_of = np.array([i for i, _ in pairs])
    src = torch.tensor(relation[prompt_of], device=device)
    dst = torch.tensor([b for _, b in pairs], device=device)
    target = torch.tensor([answer_token[(int(person[i]), b)] for i, b in pairs], device=device)
    pair_encoded = [encoded[i] for i in prompt_of]
    slot = torch.tensor(view.slots, device=device)
    directions = sae.W_dec[slot[dst]]  # [pairs, d]
    out = []
    for alpha in alphas:
        def edit(h, rs, alpha=alpha):
            if variant == "decoder":
                d = directions[rs]
                beta = h.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True)
                return h + alpha * beta * d
            z = sae.encode(h)
            error = h - sae.decode(z)
            ar = torch.arange(len(h), device=h.device)
            z[ar, slot[src[rs]]] = 0.0
            z[ar, slot[dst[rs]]] = alpha * slot_scale[dst[rs]]
            return sae.decode(z) + error

        pred = predictions_with_edit(lm, blocks, layer, pair_encoded, pad_id, edit, device,
                                     batch_size)
        out.append(((pred == target).float(), src, dst))
    return out


def swap_summary(train: list, test: list, alphas: Sequence[float], n_rel: int
                 ) -> dict[str, Any]:
    """alpha chosen on train people; success on held-out people at that alpha, with its
    95% interval and the A -> B matrix with per-cell counts; both curves for plots."""
    def rates(results: list) -> list[float]:
        return [float(hit.mean()) if len(hit) else 0.0 for hit, _, _ in results]

    train_rates, test_rates = rates(train), rates(test)
    best = int(np.argmax(train_rates))
    hit, src, dst = test[best]
    matrix = torch.zeros(n_rel, n_rel, device=hit.device)
    count = torch.zeros(n_rel, n_rel, device=hit.device)
    matrix.index_put_((src, dst), hit, accumulate=True)
    count.index_put_((src, dst), torch.ones_like(hit), accumulate=True)
    return {"success_rate": test_rates, "train_success_rate": train_rates,
            "best_alpha": alphas[best], "best_success_rate": test_rates[best],
            "best_success_ci95": wilson_interval(int(hit.sum()), len(hit)),
            "n_pairs": len(hit),
            "matrix_at_best_alpha": (matrix / count.clamp_min(1)).tolist(),
            "counts_at_best_alpha": count.long().tolist()}


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
                 swap_people: int = 100, lm_prompts_per_slice: int = 2000,
                 rho_rows: int = 4096, device: str = "cpu") -> dict[str, Any]:
    """All metrics of one run (a supervised mode or the unsupervised baseline)."""
    from supervised_sae.data.cross_checks import (
        check_prompts_match_activations,
        check_sae_fits_layer,
    )
    from supervised_sae.data.prompts import read_prompts, table_sha256
    from supervised_sae.data.store_reader import load_layer
    from supervised_sae.lm.family import transformer_blocks
    from supervised_sae.lm.load import load_lm
    from supervised_sae.lm.readout import final_readout
    from supervised_sae.lm.tokenizer import encode
    from supervised_sae.sae.model import load_sae

    data = load_layer(activations, layer, device)
    sae, meta = load_sae(sae_path, device)
    check_sae_fits_layer(sae_path, meta, activations, data)
    sae.eval()
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
    table = read_prompts(prompts_path, expected_rows=len(data.x))
    check_prompts_match_activations(prompts_path, table_sha256(table), activations)
    result: dict[str, Any] = {
        "mode": meta.get("mode"), "layer": layer, "relation_names": list(names),
        "relation_slots": view.slots, "supervised": supervised,
        "value_heads": with_values if supervised else False,
    }

    def slice_metrics(rows: torch.Tensor, assignment: list[int] | None) -> dict[str, Any]:
        return sae_slice_metrics(sae, data, rows, view, with_values, majority, names,
                                 rho_rows, readout=readout, assignment=assignment)

    # binding's relation -> slot assignment is fitted on train people / seen templates
    # and applied unchanged to every other slice
    fitted = slice_metrics(slices["train_seen"], None)
    assignment = slot_assignment(np.array(fitted["confusion"]))
    result["binding_assignment"] = assignment
    result["slices"] = {name: fitted if name == "train_seen" else slice_metrics(rows, assignment)
                        for name, rows in slices.items() if len(rows)}
    if not with_values:
        result["value_note"] = ("no value accuracy: this run has no trained value heads"
                                if supervised else "no value heads in the unsupervised SAE")
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
    result["swap"] = swap_controllability(
        sae, view, data, lm, blocks, layer, encoded, tokenizer.pad_token_id, list(alphas),
        swap_people, device)
    return result


@torch.no_grad()
def typical_slot_values(sae: SupervisedSAE, view: SlotView, data: LayerData,
                        rows: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per relation B, slot B's mean activation on rows that really ask about B (the
    latent swap's unit: alpha = 1 is as strong as a real question about B)."""
    n_rel = len(view.slots)
    sums = torch.zeros(n_rel, device=data.x.device)
    counts = torch.zeros(n_rel, device=data.x.device)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        rel = data.relation[idx]
        own = sae.encode(data.x[idx])[:, view.slots].gather(1, rel[:, None]).squeeze(1)
        sums.index_add_(0, rel, own)
        counts += torch.bincount(rel, minlength=n_rel)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.ones_like(sums))


def swap_controllability(sae: SupervisedSAE, view: SlotView, data: LayerData, lm, blocks,
                         layer: int, encoded: Sequence[Sequence[int]], pad_id: int,
                         alphas: list[float], n_people: int, device) -> dict[str, Any]:
    """Steer questions about relation A toward relation B's slot, on prompts of up to
    `n_people` people per side, sampled at random; alpha chosen on train people, the
    rate reported on held-out people (seen question templates)."""
    person = data.person.cpu().numpy()
    relation = data.relation.cpu().numpy()
    answers = answer_token_lookup(person, relation, data.answer_token_id.cpu().numpy())
    slices = data.slices()
    n_rel = len(data.relation_names)
    scale = typical_slot_values(sae, view, data, slices["train_seen"])
    sides = {side: swap_rows(data, slices[f"{side}_seen"], n_people, seed=k)
             for k, side in enumerate(("train", "test"))}
    result: dict[str, Any] = {"alphas": alphas,
                              "n_people": {side: int(len(np.unique(person[rows])))
                                           for side, rows in sides.items()},
                              "latent_slot_scale": scale.tolist()}
    for variant in ("decoder", "latent"):
        runs = {side: swap_success(sae, view, lm, blocks, layer, encoded, pad_id, relation,
                                   person, answers, rows, alphas, variant, scale, n_rel,
                                   device)
                for side, rows in sides.items()}
        if runs["train"] and runs["test"]:
            result[variant] = swap_summary(runs["train"], runs["test"], alphas, n_rel)
    return result
