"""How much a first-token check flatters each number: per relation, the LM's accuracy and
the joint SAE's value accuracy, latent swap and entity swap at one layer, scored by the
answer's first token and by the whole answer side by side (held-out people, seen
wordings; the swap at the α the evaluation chose on train people).

    python bench/whole_answers.py --results results --layer 2 --label word \
        --out bench/out/whole_answers_word.json

`--results`: a study's results folder (one draw: results/ or results/draw{d}/), after
its evaluation. Prints a markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.edit_spec import Edit
from supervised_sae.evaluation.entity_swaps import entity_edit, entity_pairs
from supervised_sae.evaluation.lm_side import open_lm_side
from supervised_sae.evaluation.slots import relation_slots
from supervised_sae.evaluation.swaps import latent_edit, swap_sides
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.layers import layer_name
from supervised_sae.sae.io import load_sae


def per_relation(hits: torch.Tensor, relation: torch.Tensor, names: list[str]
                 ) -> dict[str, float]:
    return {n: float(hits[relation == r].float().mean()) for r, n in enumerate(names)
            if (relation == r).any()}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    res, name = args.results, layer_name(args.layer)
    acts = res / "activations/activations.h5"
    data = load_layer(acts, args.layer)
    names = list(data.relation_names)
    side = open_lm_side(data, acts, res / "data/prompts.csv", res / "lm/model", "cpu")
    first_of = torch.tensor(data.answer_vocab_ids())  # each value's first token
    out: dict[str, dict[str, dict[str, float]]] = {}

    lm = json.loads((res / "lm/accuracy.json").read_text())["test_seen_templates"]
    out["lm_accuracy"] = {"first": lm["per_relation_first_token"], "whole": lm["per_relation"]}

    sae, _ = load_sae(res / f"joint/layer{name}/sae_final.pt")
    sae.eval()
    rows = data.slices()["test_seen"]
    pred = sae(data.x[rows], with_values=True)["logits"].argmax(1)
    gold, rel = data.answer[rows], data.relation[rows]
    named = data.first_token_identifies()[rows]
    out["joint_value"] = {"first": per_relation(first_of[pred] == first_of[gold], rel, names),
                          "whole": per_relation(pred == gold, rel, names),
                          "whole_where_first_token_names_value": {
                              n: float((pred == gold)[named & (rel == r)].float().mean())
                              for r, n in enumerate(names) if (named & (rel == r)).any()},
                          "first_token_names_value_share": per_relation(named, rel, names)}

    metrics = json.loads((res / f"joint/layer{name}/metrics.json").read_text())["swap"]
    view = relation_slots(sae)
    sides = swap_sides(data, int(metrics["n_people"]["test"]))  # the evaluation's people
    pairs = sides.pairs["test"]
    scale = torch.tensor(metrics["latent_slot_scale"])
    edit = Edit(latent_edit(sae, view, pairs, metrics["latent"]["best_alpha"] * scale))
    first = side.runner.run(pairs.prompt, [edit])[0][:, 0]
    whole = decode_answers(side.runner, pairs.prompt, [edit])[0]
    out["latent_swap"] = {"first": per_relation(first == first_of[pairs.target], pairs.dst,
                                                names),
                          "whole": per_relation(whole == pairs.target, pairs.dst, names),
                          "alpha": {"chosen on train people": metrics["latent"]["best_alpha"]}}

    test_rows = sides.rows["test"]
    donors = entity_pairs(data, test_rows)
    keep = donors >= 0
    test_rows, donors = test_rows[keep], donors[keep]
    donor_x = data.x[torch.from_numpy(donors)]
    edit = Edit(entity_edit(sae, view, donor_x))
    theirs = data.answer[torch.from_numpy(donors)]
    first = side.runner.run(test_rows, [edit])[0][:, 0]
    whole = decode_answers(side.runner, test_rows, [edit])[0]
    rel = data.relation[torch.from_numpy(test_rows)]
    out["entity_swap_cause"] = {"first": per_relation(first == first_of[theirs], rel, names),
                                "whole": per_relation(whole == theirs, rel, names)}
    patch = Edit(lambda _h, jobs: donor_x[jobs])  # the ceiling: Q's whole residual
    first = side.runner.run(test_rows, [patch])[0][:, 0]
    whole = decode_answers(side.runner, test_rows, [patch])[0]
    out["entity_ceiling_cause"] = {"first": per_relation(first == first_of[theirs], rel, names),
                                   "whole": per_relation(whole == theirs, rel, names)}

    print(f"{args.label}: layer {name}, held-out people, seen wordings; first token / whole "
          "answer (flattery = first - whole)\n")
    print("| relation | " + " | ".join(f"{k} (first / whole)" for k in out) + " |")
    print("|---" * (len(out) + 1) + "|")
    for n in names:
        cells = [f"{out[k]['first'].get(n, float('nan')):.3f} / "
                 f"{out[k]['whole'].get(n, float('nan')):.3f}" for k in out]
        print(f"| {n} | " + " | ".join(cells) + " |")
    share = out["joint_value"]["first_token_names_value_share"]
    print("\nshare of rows whose first token names one value: "
          + ", ".join(f"{n} {v:.2f}" for n, v in share.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"label": args.label, "layer": name, **out}, indent=1)
                            + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
