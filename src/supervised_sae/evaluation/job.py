"""The evaluation job of one trained SAE: every metric of `metrics.json`, in one pass.

The layer is loaded once (one open of the activation file, its prompts hash read with
it); each slice's rows are encoded once and every slot metric reads those codes (the
typical slot values of the latent swap come from the train slice's). A baseline without
relation slots encodes its train rows once more first, to match free slots to relations.
LM-side interventions (`interventions`) run the LM itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from supervised_sae.config.spec import EvaluationConfig
from supervised_sae.data.cross_checks import check_sae_fits_layer
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.interventions import (
    splice_accuracy,
    swap_controllability,
)
from supervised_sae.evaluation.lm_side import open_lm_side
from supervised_sae.evaluation.slots import (
    majority_answers,
    match_free_slots,
    relation_slots,
    sae_slice_metrics,
    slot_assignment,
    typical_slot_values,
)
from supervised_sae.evaluation.swaps import answer_text_lookup
from supervised_sae.lm.readout import final_readout
from supervised_sae.runs import BASELINES, MODES, run_kind
from supervised_sae.sae.io import load_sae

log = logging.getLogger(__name__)


def evaluate_sae(sae_path: str | Path, activations: str | Path, prompts_path: str | Path,
                 model_dir: str | Path, layer: int, *,
                 settings: EvaluationConfig | None = None,
                 device: str = "cpu", published: bool = True) -> dict[str, Any]:
    """All metrics of one run (a supervised mode or a baseline); `settings`: the
    config's evaluation section (None: its defaults); `published`: also run the
    published protocol (on the run kinds of `evaluation.published_protocol_runs`)."""
    settings = settings or EvaluationConfig()
    data = load_layer(activations, layer, device)
    sae, meta = load_sae(sae_path, device)
    check_sae_fits_layer(sae_path, meta, activations, data)
    if meta.get("stage") not in (*MODES, *BASELINES):  # stage 1 has untrained slots
        raise ValueError(f"{sae_path}: a {meta.get('stage')!r} SAE; evaluation takes a "
                         f"finished run: one of {', '.join((*MODES, *BASELINES))}")
    sae.eval()
    names = data.relation_names
    slices = data.slices()
    supervised = sae.n_relations > 0
    view = (relation_slots(sae) if supervised
            else match_free_slots(sae, data, slices["train_seen"], len(names)))
    with_values = run_kind(meta["stage"]).has_value_heads
    published = published and meta["stage"] in settings.published_protocol_runs
    majority = majority_answers(data, slices["train_seen"], len(names))
    side = open_lm_side(data, activations, prompts_path, model_dir, device)
    runner = side.runner
    readout = final_readout(side.lm, data.answer_vocab_ids(), model_dir).to(device)
    result: dict[str, Any] = {
        # "mode": the run folder, as metrics.csv names the run; "run_kind": its kind
        "mode": run_kind(meta["stage"]).folder, "run_kind": meta["stage"], "layer": layer,
        "relation_names": list(names),
        "relation_slots": view.slots, "supervised": supervised,
        "value_heads": with_values if supervised else False,
    }

    def slice_metrics(rows, assignment: list[int] | None) -> dict[str, Any]:
        return sae_slice_metrics(sae, data, rows, view, with_values, majority, names,
                                 settings.rho_rows, readout=readout, assignment=assignment)

    # binding's relation -> slot assignment is fitted on train people / seen templates
    # and applied unchanged to every other slice
    fitted = slice_metrics(slices["train_seen"], None)
    assignment = slot_assignment(np.array(fitted["confusion"]))
    result["binding_assignment"] = assignment
    result["slices"] = {name: fitted if name == "train_seen" else slice_metrics(rows, assignment)
                        for name, rows in slices.items() if len(rows)}
    if sae.n_free and fitted["dead_free_fraction"] == 1.0:
        result["free_bank_note"] = (f"every one of the {sae.n_free} free slots is dead on "
                                    "train people: the free bank learnt nothing")
        log.warning("%s: %s", sae_path, result["free_bank_note"])
    if not with_values:
        result["value_note"] = ("no value accuracy: this run has no trained value heads"
                                if supervised else "no value heads in the unsupervised SAE")
    result["spliced"] = {}  # filled after the swaps (their prompts' prefixes are kept
    # first: the swaps, the published walk and entity swaps run them again and again)
    scale = typical_slot_values(fitted, data, slices["train_seen"])
    gold = answer_text_lookup(data, side.table)
    swap = swap_controllability(sae, view, data, runner, settings, scale, gold, side.decode,
                                published)
    for name, rows in slices.items():
        spliced = splice_accuracy(sae, runner, data, rows,
                                  settings.lm_prompts_per_slice)
        if spliced is not None:
            result["spliced"][name] = spliced
    result["swap"] = swap
    return result
