"""Relation swaps: steer a question about relation A toward relation B's slot.

Two edits at the SAE's layer, the prompt's last position (`edit_runner`):

- decoder: h + alpha * beta * d_B, beta = |h| / |d_B|, d_B slot B's decoder row (slot A
  left as it is); alpha in `evaluation.alphas`.
- latent (the published edit, at this layer): encode h, zero slot A, set slot B to
  alpha times its typical "on" value (`slots.typical_slot_values`), decode, and add the
  SAE's reconstruction error back so only the edit changes h; alpha in
  `evaluation.latent_alphas`.

alpha is chosen on train people, success reported on held-out people (seen question
wordings), the whole answer exact (`whole_answers`). Each swap's outcome is also
classified (where the steered answer went), so a failure says whether the relation
moved at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit, EditFn
from supervised_sae.evaluation.slots import SlotView
from supervised_sae.evaluation.stats import wilson_interval
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.sae.model import SupervisedSAE


def swap_rows(data: LayerData, split_rows: torch.Tensor, n_people: int, seed: int = 0
              ) -> np.ndarray:
    """Prompts to steer: up to `n_people` people drawn at random from these rows (all of
    them when there are fewer), and for each of them one prompt per relation, its
    wording drawn at random among the rows' templates."""
    rng = np.random.default_rng(seed)
    rows = split_rows.cpu().numpy()
    person = data.person.cpu().numpy()[rows]
    relation = data.relation.cpu().numpy()[rows]
    chosen = rng.permutation(np.unique(person))[:n_people]
    picked = []
    for p in np.sort(chosen):
        mine = rows[person == p]
        for r in np.unique(relation[person == p]):
            picked.append(rng.choice(mine[relation[person == p] == r]))
    return np.array(sorted(picked), dtype=np.int64)


@dataclass
class SwapPairs:
    """Every (prompt about A, relation B) to steer, with what each outcome would be."""

    prompt: np.ndarray        # row of the prompt (about relation A)
    person: np.ndarray
    src: torch.Tensor         # A
    dst: torch.Tensor         # B
    target: torch.Tensor      # the person's B value, a value index (success)
    own: torch.Tensor         # the person's A value (no effect)
    codes: CleanCodes | None = None  # the clean codes, once a latent edit encoded them

    def __len__(self) -> int:
        return len(self.prompt)


def answer_value_lookup(data: LayerData) -> dict[tuple[int, int], int]:
    """(person, relation) -> that person's value of the relation (its value index)."""
    return {(int(p), int(r)): int(t) for p, r, t in
            zip(data.person.tolist(), data.relation.tolist(), data.answer.tolist(),
                strict=True)}


def answer_text_lookup(data: LayerData, table: Any) -> dict[tuple[int, int], str]:
    """(person, relation) -> that person's value of the relation as text, from the
    prompts table `data` was extracted from (row for row)."""
    names = list(data.relation_names)
    return {(int(p), names.index(r)): str(a) for p, r, a in
            zip(data.person.tolist(), table["relation"], table["answer"], strict=True)}


@dataclass
class SwapSides:
    """The prompts steered on each side (train people choose alpha, held-out people
    report), their pairs (None: no pair on that side), and each relation's values (to
    say where a swap went). Every edit of a layer, SAE or not, steers these."""

    rows: dict[str, np.ndarray]
    pairs: dict[str, SwapPairs | None]
    values_of: list[torch.Tensor]

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.pairs.values())


def swap_sides(data: LayerData, swap_people: int) -> SwapSides:
    """Up to `swap_people` train and held-out people's seen-wording prompts (seeds 0 and
    1), one per relation, each paired with every other relation."""
    answers = answer_value_lookup(data)
    slices, n_rel = data.slices(), len(data.relation_names)
    rows = {side: swap_rows(data, slices[f"{side}_seen"], swap_people, seed=k)
            for k, side in enumerate(("train", "test"))}
    return SwapSides(rows, {side: swap_pairs(r, data, answers, n_rel) for side, r in rows.items()},
                     relation_values(answers, n_rel, data.x.device))


def swap_pairs(rows: np.ndarray, data: LayerData, answers: dict[tuple[int, int], int],
               n_rel: int) -> SwapPairs | None:
    person, relation = data.person.cpu().numpy(), data.relation.cpu().numpy()
    pairs = [(i, b) for i in rows for b in range(n_rel)
             if b != relation[i] and (int(person[i]), b) in answers]
    if not pairs:
        return None
    device = data.x.device
    prompt = np.array([i for i, _ in pairs], dtype=np.int64)
    return SwapPairs(
        prompt=prompt, person=person[prompt],
        src=torch.tensor(relation[prompt], device=device),
        dst=torch.tensor([b for _, b in pairs], device=device),
        target=torch.tensor([answers[(int(person[i]), b)] for i, b in pairs], device=device),
        own=torch.tensor([answers[(int(person[i]), int(relation[i]))] for i, _ in pairs],
                         device=device))


def decoder_edit(sae: SupervisedSAE, view: SlotView, pairs: SwapPairs, alpha: float
                 ) -> EditFn:
    directions = sae.W_dec[torch.tensor(view.slots, device=pairs.dst.device)[pairs.dst]]

    def edit(h: torch.Tensor, jobs: torch.Tensor) -> torch.Tensor:
        d = directions[jobs]
        return h + alpha * h.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True) * d
    return edit


class CleanCodes:
    """Per swap pair, the SAE's values of slots A and B in the code of the clean vector
    and its reconstruction, encoded the first time an edit sees the pair and shared by
    every latent edit of those pairs after (each alpha, each step of the published
    walk): a latent edit changes two slots, so its decode is the clean one plus theirs."""

    def __init__(self, sae: SupervisedSAE, view: SlotView, pairs: SwapPairs):
        slot = torch.tensor(view.slots, device=pairs.dst.device)
        self.sae, self.slots = sae, list(view.slots)
        self.slot_a, self.slot_b = slot[pairs.src], slot[pairs.dst]
        n, device = len(pairs), pairs.dst.device
        self.z_a, self.z_b = torch.zeros(n, device=device), torch.zeros(n, device=device)
        self.decoded = torch.zeros(n, sae.d_model, device=device)
        self.known = torch.zeros(n, dtype=torch.bool, device=device)

    def of_sae(self, sae: SupervisedSAE, view: SlotView) -> bool:
        """Whether these are this SAE's codes, read through this view (the pairs may be
        steered through several SAEs, as a benchmark does)."""
        return self.sae is sae and self.slots == list(view.slots)

    def of(self, h: torch.Tensor, jobs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(z_A, z_B, reconstruction) of these jobs' clean vectors `h`."""
        new = ~self.known[jobs]
        if new.any():
            fresh = jobs[new]
            z = self.sae.encode(h[new])
            ar = torch.arange(len(fresh), device=z.device)
            self.z_a[fresh] = z[ar, self.slot_a[fresh]]
            self.z_b[fresh] = z[ar, self.slot_b[fresh]]
            self.decoded[fresh] = self.sae.decode(z)
            self.known[fresh] = True
        return self.z_a[jobs], self.z_b[jobs], self.decoded[jobs]


def latent_edit(sae: SupervisedSAE, view: SlotView, pairs: SwapPairs, value: torch.Tensor,
                add_error: bool = True) -> EditFn:
    """Zero slot A, set slot B to value[B], decode (+ the reconstruction error). The
    clean code comes from the pairs' `CleanCodes` (encoded once per pair)."""
    if not (pairs.codes and pairs.codes.of_sae(sae, view)):  # another SAE's, or none
        pairs.codes = CleanCodes(sae, view, pairs)
    codes, d = pairs.codes, sae.W_dec

    def edit(h: torch.Tensor, jobs: torch.Tensor) -> torch.Tensor:
        z_a, z_b, decoded = codes.of(h, jobs)
        slot_a, slot_b = codes.slot_a[jobs], codes.slot_b[jobs]
        # one slot for both relations (a baseline's matched free slot): set, not zeroed
        z_a = torch.where(slot_a == slot_b, torch.zeros_like(z_a), z_a)
        change = ((value[pairs.dst[jobs]] - z_b)[:, None] * d[slot_b]
                  - z_a[:, None] * d[slot_a])
        return (h if add_error else decoded) + change
    return edit


def outcome_rates(pred: torch.Tensor, pairs: SwapPairs,
                  values_of: list[torch.Tensor]) -> dict[str, float]:
    """Share of swaps whose answer is the person's B value (success), the person's A
    value (no effect), another person's B value (the relation moved, the person was
    lost), or anything else; the four sum to 1. `values_of[b]`: relation b's values."""
    other_person = torch.zeros_like(pred, dtype=torch.bool)
    for b, values in enumerate(values_of):  # per relation, not per swap
        mine = pairs.dst == b
        other_person[mine] = torch.isin(pred[mine], values)
    success = pred == pairs.target
    no_effect = ~success & (pred == pairs.own)
    moved = ~success & ~no_effect & other_person
    counts = {"success": success, "no_effect": no_effect, "other_person": moved,
              "other": ~(success | no_effect | moved)}
    return {k: float(v.float().mean()) for k, v in counts.items()}


def relation_values(answers: dict[tuple[int, int], int], n_rel: int, device
                    ) -> list[torch.Tensor]:
    return [torch.tensor(sorted({t for (_, r), t in answers.items() if r == b}),
                         device=device) for b in range(n_rel)]


def answered(runner: PrefixCachedRunner, pairs: SwapPairs, fns: Sequence[EditFn]
             ) -> list[torch.Tensor]:
    """Per edit, the value each pair's prompt answers after it (whole answers)."""
    return decode_answers(runner, pairs.prompt, [Edit(fn) for fn in fns])


def swap_curves(sae: SupervisedSAE, view: SlotView, runner: PrefixCachedRunner,
                pairs: SwapPairs, alphas: dict[str, Sequence[float]], scale: torch.Tensor
                ) -> dict[str, list[torch.Tensor]]:
    """Per variant, the value answered per pair at each of its alphas (one cached run)."""
    fns = [decoder_edit(sae, view, pairs, a) for a in alphas["decoder"]]
    fns += [latent_edit(sae, view, pairs, a * scale) for a in alphas["latent"]]
    preds = answered(runner, pairs, fns)
    n_dec = len(alphas["decoder"])
    return {"decoder": preds[:n_dec], "latent": preds[n_dec:]}


def success_rates(preds: list[torch.Tensor], pairs: SwapPairs) -> list[float]:
    return [float((p == pairs.target).float().mean()) for p in preds]


def swap_summary(train: tuple[list[torch.Tensor], SwapPairs],
                 test: tuple[list[torch.Tensor], SwapPairs], alphas: Sequence[float],
                 n_rel: int, values_of: list[torch.Tensor]) -> dict[str, Any]:
    """alpha chosen on train people; success on held-out people at that alpha, with its
    95% interval, where the swaps went, and the A -> B matrix with per-cell counts."""
    train_rates = success_rates(*train)
    test_rates = success_rates(*test)
    best = int(np.argmax(train_rates))
    preds, pairs = test
    at_best = outcome_summary(preds[best], pairs, n_rel, values_of)
    return {"alphas": list(alphas), "success_rate": test_rates,
            "train_success_rate": train_rates,
            "best_alpha": alphas[best], "best_success_rate": test_rates[best],
            "best_success_ci95": at_best["success_ci95"], "n_pairs": at_best["n_pairs"],
            **{f"{k}_at_best_alpha": at_best[k] for k in ("outcomes", "matrix", "counts")}}


def outcome_summary(pred: torch.Tensor, pairs: SwapPairs, n_rel: int,
                    values_of: list[torch.Tensor]) -> dict[str, Any]:
    """One edit's success on these pairs with its 95% interval, where the swaps went,
    and the A -> B matrix with per-cell counts."""
    hit = (pred == pairs.target).float()
    matrix = torch.zeros(n_rel, n_rel, device=hit.device)
    count = torch.zeros(n_rel, n_rel, device=hit.device)
    matrix.index_put_((pairs.src, pairs.dst), hit, accumulate=True)
    count.index_put_((pairs.src, pairs.dst), torch.ones_like(hit), accumulate=True)
    return {"success_rate": float(hit.mean()),
            "success_ci95": wilson_interval(int(hit.sum()), len(hit)), "n_pairs": len(hit),
            "outcomes": outcome_rates(pred, pairs, values_of),
            "matrix": (matrix / count.clamp_min(1)).tolist(),
            "counts": count.long().tolist()}
