"""Free-bank encoders side by side on one layer store, scored on validation people.

    python bench/encoder_table.py --activations results/activations/activations.h5 \
        --model results/lm/model --prompts results/data/prompts.parquet \
        --config config/quickstart.yaml --layers 0 2 3

For each encoder setting and layer: stage 1 and the joint SAE, plus the TopK baseline at
each k. L0, dead and dense fractions are over train rows; FVU, binding (assignment
fitted on train people), value accuracy, spliced accuracy and swap success are on
validation people only (swaps: alpha chosen on `swap_people` train people, success on
every validation person's seen-wording prompts), so the table can choose settings
without touching held-out people. `--set key=value` (repeatable) overrides `sae.` keys
for every run (e.g. `--set init_bias=data_mean`); `--only topk` keeps those settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from supervised_sae.config import load_config
from supervised_sae.data.prompts import read_prompts
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.interventions import splice_accuracy
from supervised_sae.evaluation.names import VARIANTS
from supervised_sae.evaluation.slots import (
    majority_answers,
    match_free_slots,
    relation_slots,
    sae_slice_metrics,
    slot_assignment,
    typical_slot_values,
)
from supervised_sae.evaluation.swaps import (
    answer_value_lookup,
    relation_values,
    swap_curves,
    swap_pairs,
    swap_rows,
    swap_summary,
)
from supervised_sae.lm.answers import AnswerTrie
from supervised_sae.lm.family import transformer_blocks
from supervised_sae.lm.load import load_lm
from supervised_sae.lm.tokenizer import encode
from supervised_sae.sae.io import load_sae
from supervised_sae.train.stages import run_baseline, run_stage1, run_stage2

SETTINGS = ([("relu", {"encoder": "relu"})]  # the seed's, for reference
            + [("topk", {"encoder": "topk", "k": k}) for k in (16, 32, 64, 128)]
            + [("batchtopk", {"encoder": "batchtopk", "k": k}) for k in (16, 32, 64, 128)]
            + [("matryoshka", {"encoder": "matryoshka", "k": k}) for k in (16, 32, 64, 128)]
            + [("jumprelu", {"encoder": "jumprelu", "target_l0": t, "l0_weight": 1.0,
                             "normalize_activations": "mean_norm", "jumprelu_threshold": 0.05,
                             "jumprelu_bandwidth": 0.05}) for t in (16, 64)])


class LayerScorer:
    """One layer's data, LM runner and swap pairs, to score many SAEs the same way."""

    def __init__(self, activations: str, model_dir: str, prompts: str, layer: int,
                 swap_people: int, alphas: dict[str, list[float]]):
        self.data = data = load_layer(activations, layer)
        lm, tokenizer = load_lm(model_dir, "cpu")
        table = read_prompts(prompts, expected_rows=len(data.x))
        self.runner = PrefixCachedRunner(lm, transformer_blocks(lm, model_dir), layer,
                                         encode(tokenizer, table["prompt"]), "cpu",
                                         stop_id=tokenizer.eos_token_id,
                                         trie=AnswerTrie(data.value_tokens))
        answers = answer_value_lookup(data)
        n_rel = len(data.relation_names)
        self.values_of = relation_values(answers, n_rel, data.x.device)
        train = swap_rows(data, data.slices()["train_seen"], swap_people, seed=0)
        validation = swap_rows(data, data.validation_rows(), 10**6, seed=1)
        self.pairs = {"train": swap_pairs(train, data, answers, n_rel),
                      "validation": swap_pairs(validation, data, answers, n_rel)}
        self.alphas = alphas

    def score(self, path: Path, with_values: bool) -> dict:
        data = self.data
        sae, _ = load_sae(path)
        slices, names = data.slices(), data.relation_names
        view = (relation_slots(sae) if sae.n_relations
                else match_free_slots(sae, data, slices["train_seen"], len(names)))
        majority = majority_answers(data, slices["train_seen"], len(names))
        fitted = sae_slice_metrics(sae, data, slices["train_seen"], view, with_values,
                                   majority, names)
        validation = sae_slice_metrics(
            sae, data, data.validation_rows(), view, with_values, majority, names,
            assignment=slot_assignment(np.array(fitted["confusion"])))
        spliced = splice_accuracy(sae, self.runner, data, data.validation_rows(), 10**6)
        scale = typical_slot_values(fitted, data, slices["train_seen"])
        curves = {side: swap_curves(sae, view, self.runner, p, self.alphas, scale)
                  for side, p in self.pairs.items()}
        swaps = {variant: swap_summary((curves["train"][variant], self.pairs["train"]),
                                       (curves["validation"][variant],
                                        self.pairs["validation"]),
                                       self.alphas[variant], len(names), self.values_of)
                 for variant in VARIANTS}
        return {"l0_train": fitted["l0_free"], "dead_train": fitted["dead_free_fraction"],
                "dense_train": fitted["dense_free_fraction"],
                "fvu_validation": validation["fvu"],
                "binding_validation": validation["binding_accuracy"],
                "value_validation": validation.get("value_accuracy"),
                "clean_validation": spliced["clean_accuracy"],
                "spliced_validation": spliced["spliced_accuracy"],
                **{f"{v}_swap_validation": swaps[v]["best_success_rate"] for v in VARIANTS},
                **{f"{v}_alpha": swaps[v]["best_alpha"] for v in VARIANTS}}


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings -> {key: YAML-parsed value}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--model", required=True, help="the LM (lens head, swaps)")
    parser.add_argument("--prompts", required=True, help="the prompts table (swaps)")
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--layers", type=int, nargs="+", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--only", nargs="+", help="encoder names to keep (default: all)")
    parser.add_argument("--sizes", type=float, nargs="+", help="k / target L0 to keep")
    parser.add_argument("--out", type=Path, default=Path("bench/out/encoder_table"))
    args = parser.parse_args()
    logging.disable(logging.INFO)
    config = load_config(args.config)
    base = config.sae.model_copy(update=parse_overrides(args.overrides))
    alphas = {"decoder": list(config.evaluation.alphas),
              "latent": list(config.evaluation.latent_alphas)}
    settings_list = [(n, o) for n, o in SETTINGS if (not args.only or n in args.only)
                     and (not args.sizes or o.get("k", o.get("target_l0")) in args.sizes
                          or n == "relu")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for layer in args.layers:
        scorer = LayerScorer(args.activations, args.model, args.prompts, layer,
                             config.evaluation.swap_people, alphas)
        baselines_done = set()
        for name, overrides in settings_list:
            settings = base.model_copy(update=overrides)
            size = overrides.get("k", overrides.get("target_l0", "-"))
            run = args.out / f"layer{layer}_{name}_{size}"
            t0 = time.perf_counter()
            run_stage1(args.activations, layer, run / "sae_stage1.pt", settings, seed=0)
            run_stage2(args.activations, layer, "joint", run / "sae_stage1.pt", run / "joint",
                       settings, seed=0, model_dir=args.model)
            seconds = round(time.perf_counter() - t0, 1)
            rows.append({"layer": layer, "encoder": name, "size": size, "run": "joint",
                         **scorer.score(run / "joint/sae_final.pt", True),
                         "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
            k = overrides.get("k")
            if k and k not in baselines_done:  # one TopK baseline per k
                baselines_done.add(k)
                folder = args.out / f"layer{layer}_topk_baseline_{k}"
                run_baseline("topk", args.activations, layer, folder, settings, seed=0)
                rows.append({"layer": layer, "encoder": "topk", "size": k, "run": "topk",
                             **scorer.score(folder / "sae_final.pt", False)})
                print(json.dumps(rows[-1]), flush=True)
            (args.out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
