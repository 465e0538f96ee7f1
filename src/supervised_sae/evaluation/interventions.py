"""LM-side interventions at one layer's last position: splicing the reconstruction in,
and steering a question about relation A toward relation B (swap controllability).

Each edit replaces the residual stream at the prompt's last position (block L's
output, or the embeddings for `emb`) and reads the LM's greedy next token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.slots import SlotView
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.load import next_token_ids
from supervised_sae.sae.model import SupervisedSAE


@torch.no_grad()
def predictions_with_edit(lm, blocks, layer: int, encoded: Sequence[Sequence[int]],
                          pad_id: int, edit: Callable[[torch.Tensor, slice], torch.Tensor]
                          | None, device: str | torch.device, batch_size: int = 256
                          ) -> torch.Tensor:
    """Greedy next token after each row, with the residual stream at `layer` (block
    `layer`'s output, or the embeddings for -1) at the row's last position replaced by
    edit(h_last, rows) (None: clean)."""
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


def swap_controllability(sae: SupervisedSAE, view: SlotView, data: LayerData, lm, blocks,
                         layer: int, encoded: Sequence[Sequence[int]], pad_id: int,
                         alphas: list[float], n_people: int, device,
                         scale: torch.Tensor) -> dict[str, Any]:
    """Steer questions about relation A toward relation B's slot, on prompts of up to
    `n_people` people per side, sampled at random; alpha chosen on train people, the
    rate reported on held-out people (seen question templates). `scale`: each slot's
    typical "on" value on train rows (`slots.typical_slot_values`), the latent edit's unit."""
    person = data.person.cpu().numpy()
    relation = data.relation.cpu().numpy()
    answers = answer_token_lookup(person, relation, data.answer_token_id.cpu().numpy())
    slices = data.slices()
    n_rel = len(data.relation_names)
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


@torch.no_grad()
def splice_accuracy(sae: SupervisedSAE, lm, blocks, layer: int,
                    encoded: Sequence[Sequence[int]], pad_id: int, targets: torch.Tensor,
                    rows: torch.Tensor, limit: int, device) -> dict[str, Any] | None:
    """The LM's first-answer-token accuracy on up to `limit` of `rows`, clean and with
    the residual at `layer` (last position) replaced by the SAE's reconstruction."""
    picked = sample_rows(rows, limit).cpu().numpy()
    if not len(picked):
        return None
    sub = [encoded[i] for i in picked]

    def splice(h, _rows):
        return sae.decode(sae.encode(h))

    clean = predictions_with_edit(lm, blocks, layer, sub, pad_id, None, device)
    spliced = predictions_with_edit(lm, blocks, layer, sub, pad_id, splice, device)
    return {"n_lm_prompts": int(len(picked)),
            "clean_accuracy": float((clean == targets[picked]).float().mean()),
            "spliced_accuracy": float((spliced == targets[picked]).float().mean())}
