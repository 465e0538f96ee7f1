"""Free-bank encoders side by side on one layer store, scored on validation people.

    python bench/encoder_table.py --activations results/activations/activations.h5 \
        --model results/lm/model --config config/quickstart.yaml --layers 0 2 3

For each encoder setting and layer: stage 1 and the joint SAE, plus the TopK baseline at
each k. L0, dead and dense fractions are over train rows; FVU, binding (assignment
fitted on train people) and value accuracy are on validation people only, so the table
can choose settings without touching held-out people. Swaps are not scored here.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from supervised_sae.config import load_config
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.slots import (
    majority_answers,
    match_free_slots,
    relation_slots,
    sae_slice_metrics,
    slot_assignment,
)
from supervised_sae.sae.io import load_sae
from supervised_sae.train.stages import run_baseline, run_stage1, run_stage2

SETTINGS = ([("topk", {"encoder": "topk", "k": k}) for k in (16, 32, 64, 128)]
            + [("batchtopk", {"encoder": "batchtopk", "k": k}) for k in (16, 32, 64, 128)]
            + [("jumprelu", {"encoder": "jumprelu", "target_l0": t, "l0_weight": 1.0,
                             "normalize_activations": "mean_norm", "jumprelu_threshold": 0.05,
                             "jumprelu_bandwidth": 0.05}) for t in (16, 64)])


def score(path: Path, data, with_values: bool) -> dict:
    sae, _ = load_sae(path)
    slices, names = data.slices(), data.relation_names
    view = (relation_slots(sae) if sae.n_relations
            else match_free_slots(sae, data, slices["train_seen"], len(names)))
    majority = majority_answers(data, slices["train_seen"], len(names))
    fitted = sae_slice_metrics(sae, data, slices["train_seen"], view, with_values, majority,
                               names)
    validation = sae_slice_metrics(sae, data, data.validation_rows(), view, with_values,
                                   majority, names,
                                   assignment=slot_assignment(np.array(fitted["confusion"])))
    return {"l0_train": fitted["l0_free"], "dead_train": fitted["dead_free_fraction"],
            "dense_train": fitted["dense_free_fraction"], "fvu_validation": validation["fvu"],
            "binding_validation": validation["binding_accuracy"],
            "value_validation": validation.get("value_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--model", required=True, help="the LM (the lens value head)")
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--layers", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/out/encoder_table"))
    args = parser.parse_args()
    logging.disable(logging.INFO)
    base = load_config(args.config).sae
    rows = []
    for layer in args.layers:
        data = load_layer(args.activations, layer)
        baselines_done = set()
        for name, overrides in SETTINGS:
            settings = base.model_copy(update=overrides)
            size = overrides.get("k", overrides.get("target_l0"))
            run = args.out / f"layer{layer}_{name}_{size}"
            t0 = time.perf_counter()
            run_stage1(args.activations, layer, run / "sae_stage1.pt", settings, seed=0)
            run_stage2(args.activations, layer, "joint", run / "sae_stage1.pt", run / "joint",
                       settings, seed=0, model_dir=args.model)
            rows.append({"layer": layer, "encoder": name, "size": size, "run": "joint",
                         **score(run / "joint/sae_final.pt", data, True),
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
            k = overrides.get("k")
            if k and k not in baselines_done:  # one TopK baseline per k
                baselines_done.add(k)
                folder = args.out / f"layer{layer}_topk_baseline_{k}"
                run_baseline("topk", args.activations, layer, folder, settings, seed=0)
                rows.append({"layer": layer, "encoder": "topk", "size": k, "run": "topk",
                             **score(folder / "sae_final.pt", data, False)})
                print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
