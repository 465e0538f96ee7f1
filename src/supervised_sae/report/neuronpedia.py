"""The slot browser's numbers in the batch layout SAEDashboard writes for Neuronpedia
(`NeuronpediaDashboardBatch` / `NeuronpediaDashboardFeature` in
`sae_dashboard.neuronpedia.neuronpedia_dashboard`; Neuronpedia's importer reads these
`batch-N.json` files). It is that library's layout, not a published specification, so the
fields written are listed in `FEATURE_FIELDS` and in docs/outputs.md, and a test checks
each file against them.

What this project measures maps onto it as follows: one prompt is one "activation"
record whose tokens are the prompt's tokens as the LM reads them; the SAE reads only the
last token, so that token carries the slot's activation and the others carry 0 (they were
not read, not measured as zero); `qualifying_token_index` points at it. Fields this
project has no number for (neuron alignment, correlated features, the logit histogram)
are empty lists, as SAEDashboard writes them when they are switched off. Torch-free.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from supervised_sae.atomic import NEURONPEDIA_EXPORT, atomic_path

log = logging.getLogger("supervised_sae")
BATCH_FEATURES = 128  # features per batch file, SAEDashboard's default batch size
EMPTY_FIELDS = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "correlated_neurons_indices", "correlated_neurons_l1",
                "correlated_neurons_pearson", "correlated_features_indices",
                "correlated_features_l1", "correlated_features_pearson",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                "decoder_weights_dist")
FEATURE_FIELDS = ("feature_index", *EMPTY_FIELDS, "neg_str", "neg_values", "pos_str",
                  "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
                  "freq_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt",
                  "dataset", "activations")
ACTIVATION_FIELDS = ("bin_min", "bin_max", "bin_contains", "tokens", "values",
                     "qualifying_token_index")


def feature(slot: dict[str, Any], n_rows: int, row_tokens: dict[int, list[str]],
            dataset: str) -> dict[str, Any]:
    """One slot as a Neuronpedia feature: its logit lens, density, activation histogram
    (bar values are the bins' centres) and top prompts, in one bin from the lowest listed
    activation to the highest."""
    bins = len(slot["act_hist"])
    width = slot["act_max"] / bins
    top = slot["top"]
    activations = [{"bin_min": top[-1][1] if top else 0.0, "bin_max": top[0][1] if top else 0.0,
                    "bin_contains": len(top) / slot["fires"] if slot["fires"] else 0.0,
                    "tokens": row_tokens[row],
                    "values": [0.0] * (len(row_tokens[row]) - 1) + [value],
                    "qualifying_token_index": len(row_tokens[row]) - 1}
                   for row, value in top]
    return {"feature_index": slot["id"], **{key: [] for key in EMPTY_FIELDS},
            "neg_str": slot["bottom_tokens"], "neg_values": slot["bottom_logits"],
            "pos_str": slot["tokens"], "pos_values": slot["token_logits"],
            "frac_nonzero": slot["density"],
            "freq_hist_data_bar_heights": slot["act_hist"],
            "freq_hist_data_bar_values": [round((i + 0.5) * width, 4) for i in range(bins)],
            "n_prompts_total": n_rows, "n_tokens_in_prompt": None, "dataset": dataset,
            "activations": activations}


def write_neuronpedia(stats: dict[str, Any], row_tokens: dict[int, list[str]],
                      out_dir: str | Path, model_dir: str | Path, sae_path: str | Path,
                      dataset: str | Path = "") -> list[Path]:
    """`batch-N.json` files of `BATCH_FEATURES` slots each, every slot (dead ones too:
    Neuronpedia lists a feature index whether or not it fires), in one folder written
    whole. The model is named by its folder, the SAE set by its run folder."""
    slots = stats["slots"]
    paths = []
    with atomic_path(out_dir, directory=True, kind=NEURONPEDIA_EXPORT) as tmp:
        for n, start in enumerate(range(0, len(slots), BATCH_FEATURES)):
            batch = {"model_id": Path(model_dir).name, "layer": stats["layer"],
                     "sae_set": f"supervised-sae-{Path(sae_path).parent.parent.name}",
                     "sae_id_suffix": None,
                     "features": [feature(s, stats["n_rows"], row_tokens, str(dataset))
                                  for s in slots[start : start + BATCH_FEATURES]]}
            (tmp / f"batch-{n}.json").write_text(json.dumps(batch))
            paths.append(Path(out_dir) / f"batch-{n}.json")
    log.info("Neuronpedia batches: %d files in %s", len(paths), out_dir)
    return paths
