"""Entity swaps, the other half of one-to-one binding (RAVEL-style cause and isolation).

On a prompt about person P and relation r, the free-slot part of the code is replaced
by person Q's (from a prompt of Q about r, its wording drawn at random), P's relation
slots are kept and P's reconstruction error is added back. Cause: the LM answers Q's
whole value of r. Isolation: it answers a value of relation r (Q's or P's): the relation
survived the person's replacement.

Patching the whole residual vector from Q's prompt is the ceiling, reported beside it.
A baseline without relation slots has no relation part to keep: its whole code is
replaced (again with P's error added back), to be read against that ceiling, not as a
comparison of equals. Without any SAE, the linear analogue (`steering`) keeps P's
component in the span of the relation probe's directions and takes the rest from Q.
Intervals resample people.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit, EditFn
from supervised_sae.evaluation.slots import SlotView
from supervised_sae.evaluation.stats import people_bootstrap_interval
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.sae.model import SupervisedSAE


def entity_pairs(data: LayerData, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each prompt row (person P, relation r), a row of another person Q of the same
    rows' people about r whose value of r differs from P's (else cause could not be told
    from no effect), Q and its wording drawn at random; -1 where there is none."""
    rng = np.random.default_rng(seed)
    person, relation = data.person.cpu().numpy(), data.relation.cpu().numpy()
    value = data.answer.cpu().numpy()
    donors = np.full(len(rows), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        others = rows[(relation[rows] == relation[row]) & (person[rows] != person[row])
                      & (value[rows] != value[row])]
        if len(others):
            donors[i] = rng.choice(others)
    return donors


def entity_edit(sae: SupervisedSAE, view: SlotView, donor_x: torch.Tensor) -> EditFn:
    """P's code with its free part (or, without relation slots, all of it) from Q's."""
    keep = torch.zeros(sae.n_free + sae.n_relations, dtype=torch.bool, device=donor_x.device)
    if view.supervised:
        keep[view.slots] = True

    def edit(h: torch.Tensor, jobs: torch.Tensor) -> torch.Tensor:
        z = sae.encode(h)
        error = h - sae.decode(z)
        mixed = torch.where(keep, z, sae.encode(donor_x[jobs]))
        return sae.decode(mixed) + error
    return edit


def entity_swaps(data: LayerData, runner: PrefixCachedRunner, rows: np.ndarray,
                 make_edit: Callable[[torch.Tensor], EditFn], kept: str, seed: int = 0
                 ) -> dict[str, Any] | None:
    """Cause and isolation of an entity swap, and the whole-residual ceiling's, on
    prompts `rows` (one per person and relation; held-out people in the evaluation).
    `make_edit(donor_x)`: the edit, given each job's donor vector (`entity_edit` for an
    SAE, `steering.linear_entity_edit` without one); `kept`: what it keeps of P."""
    donors = entity_pairs(data, rows, seed)
    rows, donors = rows[donors >= 0], donors[donors >= 0]
    if not len(rows):
        return None
    donor_x = data.x[torch.from_numpy(donors).to(data.x.device)].float()
    own = data.answer[torch.from_numpy(rows).to(data.x.device)]
    theirs = data.answer[torch.from_numpy(donors).to(data.x.device)]
    swapped, ceiling = decode_answers(runner, rows, [
        Edit(make_edit(donor_x)), Edit(lambda _h, jobs: donor_x[jobs])])
    person = data.person.cpu().numpy()[rows]

    def rates(pred: torch.Tensor) -> dict[str, Any]:
        cause = (pred == theirs).cpu().numpy()
        isolation = ((pred == theirs) | (pred == own)).cpu().numpy()
        return {"cause": float(cause.mean()),
                "cause_ci95": people_bootstrap_interval(cause, person, seed=seed),
                "isolation": float(isolation.mean()),
                "isolation_ci95": people_bootstrap_interval(isolation, person, seed=seed)}
    return {**rates(swapped), "ceiling": rates(ceiling), "n_swaps": int(len(rows)),
            "n_people": int(len(np.unique(person))), "kept": kept}
