"""Inputs that are each valid but do not belong together, and a user's table that is
incomplete for a later rule: refused where they meet, before compute, in one line that
names the files, field, relation, person or row, and with nothing downstream written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
from conftest import RELATIONS, write_structured_activations

from supervised_sae import jobs
from supervised_sae.checkpoints import RunInUseError
from supervised_sae.cli import main as cli
from supervised_sae.config import SaeConfig, load_config
from supervised_sae.data.cross_checks import MismatchError, check_prompts_match_activations
from supervised_sae.data.prompts import (
    PromptsError,
    load_prompts,
    read_prompts,
    table_sha256,
)
from supervised_sae.lm.load import load_lm
from supervised_sae.train.stages import run_stage1, run_stage2

SETTINGS = SaeConfig.default(n_free=16, stage1_epochs=1, stage2_epochs=1, batch_size=16,
                             value_head="gated", eval_every=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A stage-1 SAE of layer 1 and the activation file it was trained on."""
    work = tmp_path_factory.mktemp("stage1")
    acts = write_structured_activations(work / "activations.h5")
    out = work / "stage1/layer1/sae_stage1.pt"
    run_stage1(acts, 1, out, SETTINGS, seed=0)
    return acts, out


def run_cli(*args: str) -> None:
    cli(["--config", str(Path(__file__).parent.parent / "config/quickstart.yaml"), *args])


# --- an SAE against the activations it meets ------------------------------------------


def test_sae_evaluated_on_another_layer_is_refused(stage1, tmp_path):
    acts, sae = stage1
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit, match=rf"{sae} was trained on layer 1, but layer 0 of "
                                         rf"{acts} was asked for"):
        run_cli("evaluate", "--sae", str(sae), "--activations", str(acts), "--prompts",
                str(tmp_path / "p.csv"), "--model", str(tmp_path / "lm"), "--layer", "0",
                "--out", str(out))
    assert not out.exists()


def test_sae_on_other_activations_of_the_same_shape_is_refused(stage1, tmp_path):
    _, sae = stage1
    other = write_structured_activations(tmp_path / "other.h5", seed=5)
    out = tmp_path / "joint/layer1"
    with pytest.raises(MismatchError, match=rf"{sae} was trained on activations with "
                                            rf"content hash .* but layer 1 of {other}"):
        run_stage2(other, 1, "joint", sae, out, SETTINGS, seed=0)
    assert not out.exists()


def test_sae_with_other_relation_names_is_refused(stage1, tmp_path):
    acts, sae = stage1
    renamed = tmp_path / "renamed.h5"
    renamed.write_bytes(acts.read_bytes())
    with h5py.File(renamed, "a") as f:
        del f["relation_names"]
        f.create_dataset("relation_names", data=[*RELATIONS[1:], RELATIONS[0]],
                         dtype=h5py.string_dtype())
    with pytest.raises(MismatchError, match=rf"{sae} has relations \['birth_date'.* but "
                                            rf"{renamed} has \['birth_city'"):
        run_stage2(renamed, 1, "joint", sae, tmp_path / "joint/layer1", SETTINGS, seed=0)


def test_sae_with_another_answer_list_is_refused(stage1, tmp_path):
    acts, sae = stage1
    edited = tmp_path / "answers.h5"
    edited.write_bytes(acts.read_bytes())
    with h5py.File(edited, "a") as f:
        values = [t.decode() for t in f["answer_values"][()]]
        del f["answer_values"]
        f.create_dataset("answer_values", data=[*values[:3], "other", *values[4:]],
                         dtype=h5py.string_dtype())
    with pytest.raises(MismatchError, match=r"20 answer values, .* differ from position 3"):
        run_stage2(edited, 1, "joint", sae, tmp_path / "joint/layer1", SETTINGS, seed=0)


def test_topk_reference_from_other_activations_is_refused(stage1, tmp_path):
    from supervised_sae.train.stages import run_baseline

    _, sae = stage1
    other = write_structured_activations(tmp_path / "other.h5", seed=5)
    out = tmp_path / "topk/layer1"
    with pytest.raises(MismatchError, match=f"{sae} was trained on activations"):
        run_baseline("topk", other, 1, out, SETTINGS, seed=0, l0_from=sae)
    assert not (out / "sae_final.pt").exists()


# --- the prompts table against the activation file --------------------------------------


def test_prompts_in_another_order_are_refused(tmp_path):
    table = pd.DataFrame({"person": [0, 0, 1], "relation": ["major"] * 3,
                          "prompt": ["a ?", "b ?", "c ?"], "answer": ["x", "y", "z"],
                          "split": "train", "template": [0, 1, 0], "template_heldout": False})
    acts = write_structured_activations(tmp_path / "a.h5", n_people=2)
    with h5py.File(acts, "a") as f:
        f.attrs["prompts_sha256"] = table_sha256(table)
    check_prompts_match_activations("p.csv", table_sha256(table), acts)  # same: fine
    shuffled = table.iloc[[2, 0, 1]].reset_index(drop=True)
    with pytest.raises(MismatchError, match=rf"p.csv is not the prompts table {acts} was "
                                            "extracted from"):
        check_prompts_match_activations("p.csv", table_sha256(shuffled), acts)


def test_an_activation_file_without_the_prompts_hash_is_refused(tmp_path):
    """It used to accept any prompts table."""
    acts = write_structured_activations(tmp_path / "a.h5", n_people=2)
    with h5py.File(acts, "a") as f:
        del f.attrs["prompts_sha256"]
    with pytest.raises(MismatchError, match=rf"{acts} records no prompts_sha256 .* extract "
                                            "it again"):
        check_prompts_match_activations("p.csv", "0" * 64, acts)


def test_raw_user_table_given_to_extract_names_the_missing_step(tmp_path):
    raw = tmp_path / "mine.csv"
    pd.DataFrame({"person": ["ann"], "relation": ["major"], "prompt": ["Ann studied"],
                  "answer": ["Law"]}).to_csv(raw, index=False)
    out = tmp_path / "acts.h5"
    with pytest.raises(SystemExit, match=rf"{raw}: not a workflow prompts table .* run "
                                         "`supervised-sae data`"):
        run_cli("extract", "--model", str(tmp_path / "lm"), "--prompts", str(raw),
                "--out", str(out))
    assert not out.exists()


# --- a user's own table: complete enough for every rule ---------------------------------


def user_table(n_people: int = 6) -> pd.DataFrame:
    rows = []
    for p in range(n_people):
        for r in RELATIONS:
            rows.append({"person": f"p{p}", "relation": r,
                         "prompt": f"What is the {r} of p{p}?", "answer": f"{r}_{p % 3}",
                         "split": "train" if p % 2 else "test"})
    return pd.DataFrame(rows)


def write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def test_user_table_is_accepted_and_keeps_values_as_written(tmp_path):
    table = user_table()
    table.loc[table["relation"] == "birth_date", "answer"] = ["007", "NA", "2020", "1e3",
                                                              "None", "True"]
    imported = tmp_path / "prompts.csv"
    config = load_config([])
    jobs.import_prompts(config, write(table, tmp_path / "mine.csv"), imported)
    back = read_prompts(imported)
    assert list(back.loc[back["relation"] == "birth_date", "answer"]) == [
        "007", "NA", "2020", "1e3", "None", "True"]


def test_two_answers_for_one_person_and_relation(tmp_path):
    table = user_table()
    table.loc[len(table)] = {"person": "p1", "relation": "major", "prompt": "p1 majored in?",
                             "answer": "other", "split": "train"}
    with pytest.raises(PromptsError, match=r"person 'p1' has 2 different answers for 'major'"):
        load_prompts(write(table, tmp_path / "t.csv"))


def test_answer_already_in_the_prompt(tmp_path):
    table = user_table()
    table.loc[5, "prompt"] = f"Is it {table.loc[5, 'answer']} for p0?"
    with pytest.raises(PromptsError, match=r"row 7: the answer 'employer_city_0' is already "
                                           "in the prompt"):
        load_prompts(write(table, tmp_path / "t.csv"))


def test_relation_with_too_few_test_people(tmp_path):
    table = user_table()
    drop = (table["relation"] == "university") & (table["split"] == "test") & (
        table["person"] != "p0")
    with pytest.raises(PromptsError, match=r"relation 'university' has prompts of 1 test "
                                           r"person; every relation needs at least 2"):
        load_prompts(write(table[~drop], tmp_path / "t.csv"))


def test_relation_only_on_the_train_side(tmp_path):
    # the case that used to pass import, extraction and training, then fail in evaluation
    table = user_table()
    drop = (table["relation"] == "employer") & (table["split"] == "test")
    with pytest.raises(PromptsError, match=r"relation 'employer' has prompts of 0 test people"):
        load_prompts(write(table[~drop], tmp_path / "t.csv"))


def test_parquet_with_numbers_for_answers(tmp_path):
    table = user_table()
    table["answer"] = range(len(table))
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    with pytest.raises(PromptsError, match=r"t.parquet: column 'answer' holds int64 values; "
                                           "store it as strings"):
        load_prompts(path)


def test_cli_data_validates_the_user_table_like_the_rule(tmp_path):
    table = user_table()
    drop = (table["relation"] == "major") & (table["split"] == "train")
    mine = write(table[~drop], tmp_path / "mine.csv")
    (tmp_path / "c.yaml").write_text(f"data:\n  prompts: {mine}\n")
    out = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"relation 'major' has prompts of 0 train people"):
        cli(["--config", str(tmp_path / "c.yaml"), "data", "--out", str(out)])
    assert not (out / "prompts.csv").exists()


# --- model folders whose weights do not match their config ------------------------------


@pytest.fixture
def tiny_lm(tmp_path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from supervised_sae.lm.tokenizer import build_word_tokenizer

    folder = tmp_path / "lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=12, n_layer=2, n_embd=16, n_head=2)).save_pretrained(
        folder)
    build_word_tokenizer(["a b c"], []).save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **changes}))


def test_config_claiming_more_layers_than_the_weights(tiny_lm):
    load_lm(tiny_lm)  # as saved: fine
    edit_config(tiny_lm, n_layer=3)
    with pytest.raises(ValueError, match=rf"{tiny_lm}: the weights do not match config.json: "
                                         r"\d+ missing tensors \(e.g. \['transformer.h.2"):
        load_lm(tiny_lm)


def test_config_claiming_fewer_layers_than_the_weights(tiny_lm):
    edit_config(tiny_lm, n_layer=1)
    with pytest.raises(ValueError, match=r"the weights do not match config.json: \d+ "
                                         r"unexpected tensors \(e.g. \['transformer.h.1"):
        load_lm(tiny_lm)


def test_truncated_weights_file(tiny_lm):
    weights = tiny_lm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{tiny_lm}: cannot load as a causal language model"):
        load_lm(tiny_lm)


# --- devices ------------------------------------------------------------------------------


def test_gpu_ids_without_any_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "d.yaml").write_text(f"devices: {{ids: [0], lock_dir: {tmp_path}}}\n")
    config = load_config([tmp_path / "d.yaml"])
    with pytest.raises(ValueError, match=r"devices.ids \['0'\]: \['0'\] not among the GPUs "
                                         r"this job can see \(nvidia-smi's GPUs \[\]\)"):
        jobs._job_device(config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this PyTorch can use CUDA")
def test_gpu_ids_with_a_pytorch_that_has_no_cuda(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, GPU-fake-0'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    # set (not unset) so the job's own narrowing of them is undone after the test
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    (tmp_path / "d.yaml").write_text(f"devices: {{ids: [0], lock_dir: {tmp_path}}}\n")
    config = load_config([tmp_path / "d.yaml"])
    with pytest.raises(ValueError, match=r"was given GPU 0, but this PyTorch .* cannot use "
                                         "CUDA; install a CUDA build of PyTorch, or set "
                                         "devices.ids: cpu"):
        jobs._job_device(config)


# --- two trainings into one run folder ----------------------------------------------------

HOLD = """
import sys, time
from supervised_sae.checkpoints import exclusive_run
with exclusive_run(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_second_training_into_a_live_run_folder_is_refused(stage1, tmp_path):
    acts, sae = stage1
    out = tmp_path / "joint/layer1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "checkpoints")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunInUseError, match=rf"{out}: another process \(pid "
                                                rf"{holder.pid}\) is training this run"):
            run_stage2(acts, 1, "joint", sae, out, SETTINGS, seed=0)
        assert not (out / "sae_final.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    run_stage2(acts, 1, "joint", sae, out, SETTINGS, seed=0)  # free again: it trains
    assert (out / "sae_final.pt").exists()
