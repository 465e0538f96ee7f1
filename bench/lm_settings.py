"""LM settings chosen on validation people: one GPT-2 per setting, on one draw's data.

    python bench/lm_settings.py --config config/study.yaml \
        --setting base: --setting short:lm.epochs=20 \
        --setting bios6:data.biographies_per_person=6,lm.epochs=20

A setting is `name:key=value,...` over the `data` and `lm` sections of the config (an
empty list: the config as it is). Each trains the tokenizer and LM from scratch on the
people of `seed` (data regenerated when a data key changes) and reports its training
wall time, measured in this run, and first-answer-token accuracy on **validation
people** only (never trained on, never reported on the results page), on seen wordings
and on held-out paraphrases, with the worst held-out wording (relation and template
index) and the paraphrase accuracy without it. Test people are not scored here, so the
table can choose the study's LM without touching the people it reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd
import yaml

from supervised_sae.config.load import check_config, load_config
from supervised_sae.data.biographies import build_dataset, load_pools
from supervised_sae.lm.load import load_lm, whole_answer_correct
from supervised_sae.lm.train import train_lm


def parse_setting(text: str) -> tuple[str, dict[str, dict]]:
    name, sep, pairs = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--setting {text!r}: expected name:key=value,... (keys of data/lm)")
    update: dict[str, dict] = {}
    for pair in filter(None, pairs.split(",")):
        key, eq, value = pair.partition("=")
        section, dot, field = key.partition(".")
        if not eq or not dot or section not in ("data", "lm"):
            raise SystemExit(f"--setting {text!r}: {pair!r} is not data.KEY=VALUE or lm.KEY=VALUE")
        update.setdefault(section, {})[field] = yaml.safe_load(value)
    return name, update


def run_setting(base: dict, update: dict[str, dict], seed: int, out: Path) -> dict:
    raw = {**base, **{s: {**base[s], **update.get(s, {})} for s in ("data", "lm")}}
    config = check_config(raw)
    data, lm = config.data, config.lm
    _, bios, prompts = build_dataset(
        n_people=data.n_people, biographies_per_person=data.biographies_per_person,
        test_fraction=data.test_fraction, heldout_templates=data.heldout_templates,
        seed=seed, validation_fraction=data.validation_fraction,
        statement_wordings=data.statement_wordings)
    t0 = time.perf_counter()
    train_lm(bios, prompts, load_pools().attribute_values(), out / "model", out / "checkpoints",
             n_layer=lm.n_layer, n_embd=lm.n_embd, n_head=lm.n_head,
             n_positions=lm.n_positions, epochs=lm.epochs, batch_size=lm.batch_size,
             lr=lm.lr, seed=seed)
    train_s = time.perf_counter() - t0
    model, tokenizer = load_lm(out / "model")
    scored = validation_scores(model, tokenizer, prompts[prompts["split"] == "validation"])
    return {"update": update, "train_s": round(train_s, 1), **scored}


def validation_scores(model, tokenizer, prompts: pd.DataFrame) -> dict:
    """Seen and paraphrase accuracy of validation people, and each held-out wording's."""
    correct, _ = whole_answer_correct(model, tokenizer, list(prompts["prompt"]),
                                      list(prompts["answer"]))
    table = prompts.assign(correct=correct)
    paraphrase = table[table["template_heldout"].astype(bool)]
    by_wording = paraphrase.groupby(["relation", "template"])["correct"].mean()
    worst = by_wording.idxmin()
    return {"validation_seen": float(table.loc[~table["template_heldout"].astype(bool),
                                               "correct"].mean()),
            "validation_paraphrase": float(paraphrase["correct"].mean()),
            "n_seen": int((~table["template_heldout"].astype(bool)).sum()),
            "n_paraphrase": len(paraphrase),
            "worst_wording": f"{worst[0]} #{worst[1]}",
            "worst_wording_accuracy": float(by_wording.min()),
            "paraphrase_without_worst": float(paraphrase.loc[
                [k != worst for k in zip(paraphrase["relation"], paraphrase["template"],
                                         strict=True)], "correct"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--setting", action="append", required=True)
    parser.add_argument("--seed", type=int, help="the draw's seed (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/lm_settings"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    seed = config.seed if args.seed is None else args.seed
    base = config.model_dump(mode="json")
    results = {}
    print("| setting | changes | train min | validation seen | validation paraphrase | "
          "worst held-out wording | paraphrase without it |")
    print("|---|---|---|---|---|---|---|")
    for text in args.setting:
        name, update = parse_setting(text)
        row = run_setting(base, update, seed, args.out / f"seed{seed}" / name)
        results[name] = row
        changes = ", ".join(f"{s}.{k}={v}" for s, kv in update.items() for k, v in kv.items())
        print(f"| {name} | {changes or '(config)'} | {row['train_s'] / 60:.1f} | "
              f"{row['validation_seen']:.3f} | {row['validation_paraphrase']:.3f} | "
              f"{row['worst_wording']}: {row['worst_wording_accuracy']:.3f} | "
              f"{row['paraphrase_without_worst']:.3f} |", flush=True)
        (args.out / f"seed{seed}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
