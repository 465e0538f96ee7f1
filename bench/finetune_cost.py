"""What fine-tuning GPT-2 small on the published data shape costs (config/gpt2-small.yaml):
training steps timed on this machine's device, projected to an epoch and to the
config's epochs.

    python bench/finetune_cost.py                       # a GPT-2-small-shaped model
    python bench/finetune_cost.py --model models/gpt2   # your local GPT-2 small

Without --model the model has random weights and a byte-level BPE trained on the
biographies stands in for GPT-2's (no hub access here): the step's cost depends on the
shapes and the token counts, not on the weights. The texts are the LM rule's: every
biography and the train people's QA, each ended by EOS, in the rule's length-grouped
batches. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers as hf
import yaml

from supervised_sae.config.load import check_config, default_dict, merge
from supervised_sae.data.biographies import build_dataset
from supervised_sae.lm.fit import _batches, next_token_loss, training_texts
from supervised_sae.lm.load import load_lm
from supervised_sae.lm.tokenizer import build_bpe_tokenizer, encode

REPO = Path(__file__).resolve().parents[1]


def gpt2_small_folder(folder: Path, texts: list[str]) -> Path:
    tokenizer = build_bpe_tokenizer(texts, 50_000)
    hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=50_257)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local GPT-2 small folder (default: random weights)")
    parser.add_argument("--config", default=str(REPO / "config/gpt2-small.yaml"))
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up)")
    args = parser.parse_args()
    data, lm = load_config_sections(args.config)
    _, bios, prompts = build_dataset(data["n_people"], data["biographies_per_person"],
                                     data["test_fraction"], data["heldout_templates"], 0,
                                     validation_fraction=data["validation_fraction"])
    texts = training_texts(bios, prompts)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else gpt2_small_folder(Path(tmp) / "m", texts)
        model, tokenizer = load_lm(folder, device)
    model = model.float().train()
    eos = tokenizer.eos_token_id
    ids = [x + [eos] for x in encode(tokenizer, texts)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lm["lr"])
    batches = _batches(ids, lm["batch_size"], random.Random(0), tokenizer.pad_token_id)
    times = []
    for _, micro in zip(range(args.steps + 1), batches, strict=False):
        start = time.perf_counter()
        n_targets = sum(int(mask[:, 1:].sum()) for _, mask, _ in micro)
        optimizer.zero_grad(set_to_none=True)
        for input_ids, mask, labels in micro:
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            next_token_loss(logits, labels.to(device), n_targets).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    steps_per_epoch = math.ceil(len(ids) / lm["batch_size"])
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "model": str(args.model or "random GPT-2 small"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "texts": len(ids), "tokens_per_epoch": sum(map(len, ids)),
        "steps_per_epoch": steps_per_epoch, "seconds_per_step": round(step, 3),
        "epoch_minutes": round(step * steps_per_epoch / 60, 1),
        "epochs": lm["epochs"], "hours_for_all_epochs": round(
            step * steps_per_epoch * lm["epochs"] / 3600, 2),
        "note": "optimizer steps only; each epoch also scores validation people"}, indent=1))


def load_config_sections(path: str) -> tuple[dict, dict]:
    """The data and LM sections of the config, checked, with lm.pretrained left out: the
    model is the one given here."""
    config = default_dict()
    merge(config, yaml.safe_load(Path(path).read_text()))
    config["lm"].update(pretrained=None, finetune=False)
    study = check_config(config)
    return study.data.model_dump(), study.lm.model_dump()


if __name__ == "__main__":
    main()
