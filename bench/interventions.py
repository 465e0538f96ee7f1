"""Swap edits with and without prefix caching, side by side in one run, and the cost of
each intervention part of an evaluation job.

    python bench/interventions.py --sae results/joint/layer2/sae_final.pt \
        --activations results/activations/activations.h5 \
        --prompts results/data/prompts.csv --model results/lm/model --layer 2

The uncached path reruns every steered prompt in full for every edit and alpha (what
evaluation did before `edit_runner`); the cached one runs each prompt's prefix once.
Both give the same tokens (checked here). Times are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from supervised_sae.config import load_config
from supervised_sae.data.prompts import read_prompts
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit
from supervised_sae.evaluation.entity_swaps import entity_edit, entity_swaps
from supervised_sae.evaluation.interventions import predictions_with_edit
from supervised_sae.evaluation.published import published_protocol
from supervised_sae.evaluation.slots import (
    majority_answers,
    match_free_slots,
    relation_slots,
    sae_slice_metrics,
    typical_slot_values,
)
from supervised_sae.evaluation.swaps import (
    answer_text_lookup,
    answer_value_lookup,
    decoder_edit,
    latent_edit,
    relation_values,
    swap_pairs,
    swap_rows,
    swap_summary,
)
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.layers import parse_layer
from supervised_sae.lm.answers import AnswerTrie
from supervised_sae.lm.family import transformer_blocks
from supervised_sae.lm.load import load_lm
from supervised_sae.lm.tokenizer import encode
from supervised_sae.sae.io import load_sae


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--sae", "--activations", "--prompts", "--model", "--layer"):
        parser.add_argument(name, required=True)
    parser.add_argument("--config", default="config/config.yaml",
                        help="the study config whose evaluation section to use")
    parser.add_argument("--swap-people", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    ev = load_config(args.config).evaluation
    layer = parse_layer(args.layer)
    data = load_layer(args.activations, layer)
    sae, _ = load_sae(args.sae)
    lm, tokenizer = load_lm(args.model)
    table = read_prompts(args.prompts, expected_rows=len(data.x))
    encoded = encode(tokenizer, table["prompt"])
    blocks = transformer_blocks(lm, args.model)
    names, slices = data.relation_names, data.slices()
    view = (relation_slots(sae) if sae.n_relations
            else match_free_slots(sae, data, slices["train_seen"], len(names)))
    majority = majority_answers(data, slices["train_seen"], len(names))
    fitted = sae_slice_metrics(sae, data, slices["train_seen"], view, False, majority, names)
    scale = typical_slot_values(fitted, data, slices["train_seen"])
    answers = answer_value_lookup(data)
    rows = swap_rows(data, slices["train_seen"], args.swap_people or ev.swap_people)
    pairs = swap_pairs(rows, data, answers, len(names))
    fns = ([decoder_edit(sae, view, pairs, a) for a in ev.alphas]
           + [latent_edit(sae, view, pairs, a * scale) for a in ev.latent_alphas])
    pair_encoded = [encoded[i] for i in pairs.prompt]

    def uncached():
        return [predictions_with_edit(lm, blocks, layer, pair_encoded, tokenizer.pad_token_id,
                                      fn, "cpu") for fn in fns]

    runner = PrefixCachedRunner(lm, blocks, layer, encoded, "cpu",
                                stop_id=tokenizer.eos_token_id,
                                trie=AnswerTrie(data.value_tokens))

    def cached():
        return [t[:, 0] for t in runner.run(pairs.prompt, [Edit(fn) for fn in fns])]

    (plain, t_plain), (fast, t_fast) = timed(uncached), timed(cached)
    same = all(torch.equal(a, b) for a, b in zip(plain, fast, strict=True))
    values_of = relation_values(answers, len(names), "cpu")
    n_dec = len(ev.alphas)
    answered = decode_answers(runner, pairs.prompt, [Edit(fn) for fn in fns[n_dec:]])
    latent = swap_summary((answered, pairs), (answered, pairs), ev.latent_alphas,
                          len(names), values_of)
    text = answer_text_lookup(data, table)
    gold = [text[(int(p), b)] for p, b in zip(pairs.person, pairs.dst.tolist(), strict=True)]
    _, t_published = timed(lambda: published_protocol(
        sae, view, runner, pairs, gold, lambda ids: tokenizer.decode(
            ids, skip_special_tokens=True), ev.published_alphas, ev.latent_alphas, scale,
        ev.max_new_tokens, latent))
    test_rows = swap_rows(data, slices["test_seen"], args.swap_people or ev.swap_people, 1)
    _, t_entity = timed(lambda: entity_swaps(data, runner, test_rows,
                                             lambda d: entity_edit(sae, view, d), "slots"))
    result = {"pairs": len(pairs), "edits": len(fns), "same_tokens": bool(same),
              "uncached_s": t_plain, "cached_s": t_fast, "speedup": t_plain / t_fast,
              "published_protocol_s": t_published, "entity_swaps_s": t_entity,
              "max_new_tokens": ev.max_new_tokens}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
