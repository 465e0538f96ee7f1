"""Jobs killed with SIGKILL resume to the uninterrupted result; a full disk leaves nothing."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import write_structured_activations
from safetensors.torch import load_file

from supervised_sae.data.biographies import build_dataset, load_pools
from supervised_sae.lm.tokenizer import build_word_tokenizer
from supervised_sae.lm.train import build_model


def cli(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "supervised_sae.cli", "--config", str(cfg), *args]


def kill_when(cmd: list[str], ready, delay: float) -> None:
    """Start cmd, wait until ready() is true, let it run `delay` more seconds, SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, "the job ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    cfg = folder / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"n_people": 30, "biographies_per_person": 2},
        "lm": {"n_layer": 2, "n_embd": 32, "n_head": 2, "epochs": 14, "batch_size": 16,
               "lr": 0.003},
        "devices": {"ids": "cpu"}}))
    subprocess.run(cli(cfg, "data", "--out", str(folder)), check=True, capture_output=True)
    return folder


def test_killed_lm_training_resumes_to_the_same_model(small_data, tmp_path):
    cfg = small_data / "cfg.yaml"
    args = ("train-lm", "--prompts", str(small_data / "prompts.csv"), "--biographies",
            str(small_data / "biographies.csv"))
    subprocess.run(cli(cfg, *args, "--out", str(tmp_path / "ref")), check=True,
                   capture_output=True)
    out = tmp_path / "killed"
    checkpoints = tmp_path / "killed.checkpoints"
    kill_when(cli(cfg, *args, "--out", str(out)),
              lambda: checkpoints.is_dir() and any(checkpoints.glob("ckpt_*.pt")), 0.4)
    assert not out.exists()
    rerun = subprocess.run(cli(cfg, *args, "--out", str(out)), capture_output=True, text=True,
                           check=True)
    assert "resumed LM training" in rerun.stderr
    ref, got = load_file(tmp_path / "ref/model.safetensors"), load_file(out / "model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert (ref[key] == got[key]).all(), key


def test_killed_extraction_restarts_cleanly(tmp_path):
    _, bios, prompts = build_dataset(300, 1, 0.5, 2, seed=0)
    tokenizer = build_word_tokenizer(bios.text.tolist(), load_pools().attribute_values())
    model_dir = tmp_path / "lm"
    build_model(len(tokenizer), 2, 64, 2, 64, tokenizer.eos_token_id, tokenizer.pad_token_id,
                seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts.to_csv(tmp_path / "prompts.csv", index=False)
    cfg = tmp_path / "cfg.yaml"
    # batch 8: many small forward passes, so the job lasts long enough to be killed mid-way
    cfg.write_text(yaml.safe_dump({"activations": {"batch_size": 8, "dtype": "float32"},
                                   "devices": {"ids": "cpu"}}))
    args = ("extract", "--model", str(model_dir), "--prompts", str(tmp_path / "prompts.csv"))
    subprocess.run(cli(cfg, *args, "--out", str(tmp_path / "ref.h5")), check=True,
                   capture_output=True)
    out = tmp_path / "acts.h5"
    kill_when(cli(cfg, *args, "--out", str(out)),
              lambda: any(tmp_path.glob(".acts.h5.*.tmp")), 0.2)
    assert not out.exists()  # a killed extraction never leaves a file that looks finished
    subprocess.run(cli(cfg, *args, "--out", str(out)), check=True, capture_output=True)
    assert not list(tmp_path.glob(".acts.h5.*.tmp"))  # the dead job's leftovers are gone
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(out) as b:
        assert a["layers/1"].shape == b["layers/1"].shape == (len(prompts), 64)
        for key in ("layers/0", "layers/1", "relation", "answer"):
            assert np.array_equal(a[key][:], b[key][:]), key


def _full_disk(limit_bytes: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_full_disk_gives_a_clear_error_and_no_partial_output(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"sae": {"n_free": 4096, "stage1_epochs": 4,
                                           "checkpoint_every": 1},
                                   "devices": {"ids": "cpu"}}))
    out = tmp_path / "run/sae_stage1.pt"
    run = subprocess.run(cli(cfg, "train", "--activations", str(acts), "--layer", "0",
                             "--mode", "stage1", "--out", str(out)), capture_output=True,
                         text=True, preexec_fn=_full_disk(200_000))
    assert run.returncode != 0
    assert "supervised-sae: error: cannot write" in run.stderr
    assert "is the disk full?" in run.stderr
    assert not out.exists()
    assert not [p for p in out.parent.rglob("*") if p.is_file()]  # no partial checkpoint


@pytest.mark.workflow  # starts Snakemake
def test_snakemake_rerun_after_a_kill_resumes_sae_training(tmp_path):
    """Kill Snakemake and its training job mid-run; `--rerun-incomplete` resumes from the
    checkpoint beside the (deleted) output and ends with the uninterrupted result."""
    from conftest import REPO

    config = {"lm": {"n_layer": 2}, "layers": [0], "devices": {"ids": "cpu"},
              "sae": {"n_free": 4096, "stage1_epochs": 60, "batch_size": 8,
                      "checkpoint_every": 2}}
    results = {}
    for name in ("reference", "killed"):
        work = tmp_path / name
        (work / "results/activations").mkdir(parents=True)
        write_structured_activations(work / "results/activations/activations.h5",
                                     n_people=60)
        (work / "c.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
               str(work), "results/stage1/layer0/sae_stage1.pt", "--cores", "2",
               "--rerun-incomplete", "--configfile", str(work / "c.yaml")]
        if name == "killed":
            checkpoints = work / "results/stage1/layer0/checkpoints"
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            deadline = time.monotonic() + 300
            while not any(checkpoints.glob("ckpt_*.pt")) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            assert proc.poll() is None, "the job ended before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, at once
            proc.wait()
            assert not (work / "results/stage1/layer0/sae_stage1.pt").exists()
            # a killed Snakemake leaves its directory lock: the documented first step
            subprocess.run([*cmd, "--unlock"], check=True, capture_output=True)
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = torch.load(work / "results/stage1/layer0/sae_stage1.pt",
                                   weights_only=True)
    log = (tmp_path / "killed/results/logs/stage1/layer0.log").read_text()
    assert "resumed from" in log
    for key, tensor in results["reference"]["state_dict"].items():
        assert torch.equal(tensor, results["killed"]["state_dict"][key]), key
