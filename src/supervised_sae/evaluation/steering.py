"""Baselines that are not SAEs, on the SAE swaps' own prompts and pairs (`swaps`): what a
researcher tries before any SAE, and the ceiling of a natural edit at one position.

Relation swaps (a prompt about A steered to B; alpha chosen on train people, success on
held-out people, as the SAE's latent and decoder swaps):

- DiffMean (AxBench's steering baseline): h + alpha (mu_B - mu_A), mu_r the mean of
  train people's seen-wording activations about r at this layer; alpha in units of
  |mu_B - mu_A| (`evaluation.steering_alphas`: 1 moves A's mean onto B's).
- Probe direction: h + alpha |mu_B - mu_A| (w_B - w_A) / |w_B - w_A|, w_r the relation
  probe's weight row of r in the activations' own coordinates (the probe is fitted on
  standardised activations, so its raw-space row is w_r / scale); the same alpha grid.
- Ceiling: the last position's residual replaced by the same person's residual from a
  question about B (a seen wording drawn at random): what the model itself writes there
  when asked B (an interchange intervention). No alpha; a reference, not a method. Not
  a strict bound: an edit that writes a vector the model never makes at that position
  (DiffMean at a large alpha) can pass it, as it does where the question's relation is
  not yet at the last position (the embedding output).

Entity swaps, the linear analogue of keeping P's relation slots and taking Q's free
code: Q's residual with its component in the span of the relation probe's directions
replaced by P's (`linear_entity_edit`), beside the whole-residual ceiling (`entity_swaps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit, EditFn
from supervised_sae.evaluation.entity_swaps import entity_swaps
from supervised_sae.evaluation.probes import fit_probe
from supervised_sae.evaluation.swaps import (
    SwapPairs,
    outcome_summary,
    success_rates,
    swap_sides,
    swap_summary,
)
from supervised_sae.evaluation.whole_answers import decode_answers

METHODS = ("diffmean", "probe_direction")  # the steered baselines, with an alpha grid


def relation_means(data: LayerData, rows: torch.Tensor) -> torch.Tensor:
    """[n_relations, d]: the mean activation of `rows` per relation (zero where none)."""
    n_rel = len(data.relation_names)
    x, relation = data.x[rows].float(), data.relation[rows]
    sums = torch.zeros(n_rel, x.shape[1], device=x.device).index_add_(0, relation, x)
    counts = torch.bincount(relation, minlength=n_rel).clamp_min(1)
    return sums / counts[:, None]


def probe_rows(data: LayerData, rows: torch.Tensor, steps: int) -> torch.Tensor:
    """[n_relations, d]: the relation probe's weight rows in the activations' own
    coordinates (logit_r = w_r . h + const), fitted on `rows` as `probes` fits it."""
    with torch.enable_grad():
        w, _b, _mean, scale = fit_probe(data.x[rows].float(), data.relation[rows],
                                        len(data.relation_names), steps)
    return (w / scale[:, None]).T


def steering_vectors(means: torch.Tensor, probe: torch.Tensor, pairs: SwapPairs
                     ) -> dict[str, torch.Tensor]:
    """Per method, the vector added at alpha = 1 to each pair's prompt: mu_B - mu_A, and
    the probe's w_B - w_A scaled to the same length."""
    diff = means[pairs.dst] - means[pairs.src]
    probe_diff = probe[pairs.dst] - probe[pairs.src]
    unit = probe_diff / probe_diff.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return {"diffmean": diff, "probe_direction": unit * diff.norm(dim=1, keepdim=True)}


def shift_edit(vectors: torch.Tensor, alpha: float) -> EditFn:
    return lambda h, jobs: h + alpha * vectors[jobs]


def ceiling_donors(data: LayerData, rows: torch.Tensor, pairs: SwapPairs, seed: int = 0
                   ) -> np.ndarray:
    """Per pair, a row of `rows` of the same person about B, drawn at random (-1: none)."""
    rng = np.random.default_rng(seed)
    pool = rows.cpu().numpy()
    person, relation = data.person.cpu().numpy()[pool], data.relation.cpu().numpy()[pool]
    donors = np.full(len(pairs), -1, dtype=np.int64)
    for i, (p, b) in enumerate(zip(pairs.person, pairs.dst.tolist(), strict=True)):
        mine = pool[(person == p) & (relation == b)]
        if len(mine):
            donors[i] = rng.choice(mine)
    return donors


def ceiling_edit(data: LayerData, donors: np.ndarray) -> EditFn:
    """Each job's vector replaced by its donor row's (a pair without one: left clean)."""
    index = torch.from_numpy(donors).to(data.x.device)
    donor_x = data.x[index.clamp_min(0)].float()
    has = (index >= 0)[:, None]
    return lambda h, jobs: torch.where(has[jobs], donor_x[jobs], h)


def span_basis(directions: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
    """[d, k] orthonormal basis of the span of the rows of `directions` (a softmax
    probe's rows sum to zero, so six relations span at most five dimensions; a float32
    fit leaves ~1e-6 of the sixth, below `rtol` of the largest)."""
    u, s, _ = torch.linalg.svd(directions.T.double(), full_matrices=False)
    return u[:, s > rtol * s.max()].to(directions.dtype)


def linear_entity_edit(basis: torch.Tensor, donor_x: torch.Tensor) -> EditFn:
    """Q's vector (the donor's) with its component in span(basis) replaced by P's (the
    clean vector h): P's relation-probe logits kept, the rest of Q taken."""
    def edit(h: torch.Tensor, jobs: torch.Tensor) -> torch.Tensor:
        q = donor_x[jobs]
        return q + ((h - q) @ basis) @ basis.T
    return edit


def steering_baselines(data: LayerData, runner: PrefixCachedRunner, swap_people: int,
                       alphas: Sequence[float], probe_steps: int) -> dict[str, Any]:
    """Every baseline of this module at one layer: `swap_people` per side as the SAE
    swaps steer, `alphas` the DiffMean / probe grid, `probe_steps` the probe's L-BFGS
    iterations. The shape of metrics.json's `swap`, so the summary reads both alike."""
    slices = data.slices()
    train = slices["train_seen"]
    means = relation_means(data, train)
    probe = probe_rows(data, train, probe_steps)
    sides = swap_sides(data, swap_people)
    n_rel = len(data.relation_names)
    swap: dict[str, Any] = {"alphas": list(alphas)}
    result: dict[str, Any] = {"layer": data.layer, "relation_names": list(data.relation_names),
                              "swap": swap}
    if sides.complete:
        curves, ceiling = {}, {}
        for side, pairs in sides.pairs.items():
            vectors = steering_vectors(means, probe, pairs)
            fns = [shift_edit(vectors[m], a) for m in METHODS for a in alphas]
            donors = ceiling_donors(data, slices[f"{side}_seen"], pairs, seed=1)
            *steered, patched = decode_answers(
                runner, pairs.prompt, [*(Edit(fn) for fn in fns), Edit(ceiling_edit(data, donors))])
            curves[side] = {m: steered[k * len(alphas):(k + 1) * len(alphas)]
                            for k, m in enumerate(METHODS)}
            ceiling[side] = patched
        for m in METHODS:
            swap[m] = swap_summary((curves["train"][m], sides.pairs["train"]),
                                   (curves["test"][m], sides.pairs["test"]), alphas, n_rel,
                                   sides.values_of)
        swap["ceiling"] = {
            **outcome_summary(ceiling["test"], sides.pairs["test"], n_rel, sides.values_of),
            "train_success_rate": success_rates([ceiling["train"]], sides.pairs["train"])[0]}
        # the steering vectors' length against the activations', for reading alpha
        diff = means[:, None] - means[None]
        off = ~torch.eye(n_rel, dtype=torch.bool, device=diff.device)
        swap["diffmean_norm_over_h"] = float(diff.norm(dim=2)[off].mean()
                                             / data.x[train].float().norm(dim=1).mean())
    basis = span_basis(probe)
    for key, side in (("entity", "test"), ("entity_train", "train")):
        swap[key] = entity_swaps(data, runner, sides.rows[side],
                                 lambda donor_x: linear_entity_edit(basis, donor_x),
                                 f"P's component in the relation probe's span ({basis.shape[1]} "
                                 "dimensions)")
    return result
