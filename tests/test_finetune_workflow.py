"""The published recipe end to end on a real (tiny) pretrained model of two families:
the workflow fine-tunes it on the biographies and runs through evaluation; held-out
people's answers go from none to many, and the pretrained folder is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
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


def test_the_published_setting_dry_run_fine_tunes_gpt2_small_with_jobs_sized_for_it(tmp_path):
    """config/gpt2-small.yaml over a GPT-2-small-shaped folder (random weights): the
    fine-tuning job, every layer's SAEs, each LM job's memory from 124.4M parameters,
    and the three GPUs' layer groups."""
    import math

    import transformers as hf
    from test_ecosystem import dry_run, job_resources

    from supervised_sae.config.memory import BYTES_PER_PARAMETER, JOB_BASE_MB
    from supervised_sae.train.devices import home_index

    folder = tmp_path / "gpt2"
    hf.GPT2LMHeadModel(hf.GPT2Config()).save_pretrained(folder)
    (tmp_path / "where.yaml").write_text(yaml.safe_dump({"lm": {"pretrained": str(folder)}}))
    out = dry_run(tmp_path / "work", "--cores", "12", "--resources", "gpu=3", "--configfile",
                  str(REPO / "config/gpt2-small.yaml"), str(tmp_path / "where.yaml"))
    counts = job_counts(out)
    assert counts["train_lm"] == 1 and counts["train_stage1"] == 12
    assert counts["train_stage2"] == 36 and counts["evaluate"] == 60
    params = 124_439_808
    lm_mb = {use: math.ceil(params * b / 2**20) for use, b in BYTES_PER_PARAMETER.items()}
    asked = {rule: int(res["mem_mb"]) for rule, res in job_resources(out) if "mem_mb" in res}
    assert asked["train_lm"] == JOB_BASE_MB + lm_mb["training"]
    for rule in ("extract_activations", "lm_accuracy", "probes", "steering"):
        assert asked[rule] == JOB_BASE_MB + lm_mb["inference"], rule
    assert asked["evaluate"] == asked["train_stage1"] + lm_mb["inference"]
    assert all(res["gpu"] == "1" for rule, res in job_resources(out) if rule == "train_lm")
    # three GPUs: blocks 0-3, 4-7 and 8-11 each prefer their own
    assert [home_index(layer, 12, 3) for layer in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
