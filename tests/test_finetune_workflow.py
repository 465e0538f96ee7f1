"""The published recipe end to end on a real (tiny) pretrained model of two families:
the workflow fine-tunes it on the biographies and runs through evaluation; held-out
people's answers go from none to many, and the pretrained folder is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_finetune import folder_hashes
from test_workflow import TINY, job_counts, snakemake
from tiny_pretrained import build_pretrained

from supervised_sae.lm.load import answer_accuracy, load_lm

pytestmark = pytest.mark.workflow

# 200 people: with 150, a model this small answered 5% of held-out people after 15
# epochs; with 200, 15-20% after 12 (docs/real-models.md, "A tiny model in the tests")
STUDY = {
    **TINY,
    "data": {"n_people": 200, "biographies_per_person": 4},
    "lm": {"finetune": True, "epochs": 12, "batch_size": 32, "lr": 0.005},
    "layers": [1],
    "modes": ["joint"],
}


def majority_floor(prompts: pd.DataFrame, split: str) -> float:
    """Accuracy of answering each relation's commonest train answer."""
    train = prompts[prompts["split"] == "train"]
    common = train.groupby("relation")["answer"].agg(lambda a: a.value_counts().index[0])
    part = prompts[(prompts["split"] == split) & ~prompts["template_heldout"]]
    return float((part["answer"] == part["relation"].map(common)).mean())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_workflow_finetunes_a_pretrained_model_and_evaluates_it(family, tmp_path):
    pretrained = build_pretrained(tmp_path / "models" / family, family, n_layer=2, width=128,
                                  vocab_size=4000)
    before = folder_hashes(pretrained)
    config = {**STUDY, "lm": {**STUDY["lm"], "pretrained": str(pretrained)}}
    work = tmp_path / "study"
    work.mkdir()
    (work / "ft.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(work, "results/joint/layer1/metrics.json", "results/lm/accuracy.json",
                    "--cores", "2", "--configfile", str(work / "ft.yaml"))
    assert job_counts(run.stdout + run.stderr)["train_lm"] == 1
    assert folder_hashes(pretrained) == before

    accuracy = json.loads((work / "results/lm/accuracy.json").read_text())
    assert accuracy["lm"]["origin"] == "fine-tuned"
    assert accuracy["lm"]["family"] == family and accuracy["held_out_facts_read"] is True
    prompts = pd.read_csv(work / "results/data/prompts.csv", keep_default_na=False)
    model, tokenizer = load_lm(pretrained)
    untuned = answer_accuracy(model, tokenizer, prompts)["test_seen_templates"]["accuracy"]
    tuned = accuracy["test_seen_templates"]["accuracy"]
    floor = majority_floor(prompts, "test")
    # 0.15 (GPT-2) and 0.20 (Llama) when this was written: far above both the model before
    # fine-tuning (0.0) and answering each relation's commonest value
    assert untuned < 0.01 and tuned > 0.1 and tuned > 5 * floor, (tuned, untuned, floor)
    metrics = json.loads((work / "results/joint/layer1/metrics.json").read_text())
    assert 0 <= metrics["slices"]["test_seen"]["binding_accuracy"] <= 1
    assert Path(work / "results/lm/model/lm_origin.json").is_file()
