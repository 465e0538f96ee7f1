"""The reproduction row (`reproduction`): the seed's SAE as written (ReLU free bank, the
seed's L1 term) beside the study's joint SAE at one layer of the first draw, on the same
people, LM and activations."""

from __future__ import annotations

from typing import Any

import pandas as pd

from supervised_sae.evaluation.summary import main_study, reproduced
from supervised_sae.layers import layer_name, parse_layer
from supervised_sae.registry import encoder_label
from supervised_sae.report.summary_view import PARAPHRASE, SEEN, Summary, cell, table
from supervised_sae.runs import REPRODUCTION_SAE

# (header, slice, metric, digits) of the comparison, reconstruction first
COLUMNS = (
    ("free-slot L0", SEEN, "l0_free", 1),
    ("dead free slots", SEEN, "dead_free_fraction", 3),
    ("FVU", SEEN, "fvu", 3),
    ("spliced accuracy drop", SEEN, "spliced_accuracy_drop", 3),
    ("binding, seen", SEEN, "binding_accuracy", 3),
    ("binding, paraphrases", PARAPHRASE, "binding_accuracy", 3),
    ("decoder swap", "swap", "decoder.best_success_rate", 3),
    ("latent swap", "swap", "latent.best_success_rate", 3),
    ("published protocol", "swap", "published.success_rate", 3),
    ("value accuracy", SEEN, "value_accuracy", 3),
)


def reproduction_section(summary: pd.DataFrame, config: dict[str, Any]) -> list[str]:
    """The page's section: both joint SAEs at the reproduction layer of the first draw
    (± over that draw's SAE seeds); empty without a reproduction row."""
    rows = reproduced(summary)
    layer = (config.get("reproduction") or {}).get("layer")
    if not len(rows) or layer is None:
        return []
    layer = parse_layer(layer)
    first = int(rows["draw"].min())
    study = main_study(summary)
    study = Summary(study[(study["draw"] == first) & (study["mode"] == "joint")])
    seed = Summary(rows[rows["mode"] == "joint"].assign(reproduction=False))
    sae = config["sae"]
    literal = {**sae, **REPRODUCTION_SAE}
    lines = [[f"joint, the study's ({encoder_label(sae)})",
              *(cell(study.get("joint", layer, s, m), d) for _, s, m, d in COLUMNS)],
             [f"joint, the seed's ({encoder_label(literal)})",
              *(cell(seed.get("joint", layer, s, m), d) for _, s, m, d in COLUMNS)]]
    return ["## The seed's SAE as written (reproduction row)", "",
            f"The joint SAE again at layer {layer_name(layer)} of the first draw with the "
            "seed's ReLU free bank and its L1 term (the mean of |z| over rows and all "
            "slots, so its pull on one slot is its weight over the slot count), every "
            "other setting the study's, from the same activations; beside it the study's "
            "own joint SAE on the same draw (held-out people; ± over that draw's SAE "
            "seeds, none with one).", "",
            table(["run", *(h for h, _, _, _ in COLUMNS)], lines), ""]
