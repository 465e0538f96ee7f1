"""A training job killed with SIGKILL resumes from its checkpoint to identical tensors."""

import os
import signal
import subprocess
import sys
import time

import torch
import yaml
from conftest import write_structured_activations

from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.cli import main


def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "sae": {"n_free": 2048, "stage1_epochs": 30, "batch_size": 16, "checkpoint_every": 2,
                "eval_every": 10, "keep_checkpoints": 2},
        "devices": {"ids": "cpu"},
    }))
    return path


def train_cmd(cfg, acts, out):
    return [sys.executable, "-m", "supervised_sae.cli", "--config", str(cfg), "train",
            "--activations", str(acts), "--layer", "0", "--mode", "stage1", "--out", str(out)]


def test_killed_training_resumes_to_the_same_result(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=120)
    cfg = config_file(tmp_path)
    reference = tmp_path / "reference/sae_stage1.pt"
    subprocess.run(train_cmd(cfg, acts, reference), check=True, capture_output=True)

    out = tmp_path / "killed/sae_stage1.pt"
    proc = subprocess.Popen(train_cmd(cfg, acts, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = CheckpointStore(out.parent / "checkpoints")
    deadline = time.monotonic() + 120
    while not store.paths() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside a later epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the job finished before it could be killed; make it longer"
    assert store.paths(), "no checkpoint was written before the kill"

    rerun = subprocess.run(train_cmd(cfg, acts, out), check=True, capture_output=True,
                           text=True)
    assert "resumed from" in rerun.stderr
    a = torch.load(reference, weights_only=True)
    b = torch.load(out, weights_only=True)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    losses = [e["losses"]["recon"] for e in a["metadata"]["history"]["stage1"]]
    assert losses == [e["losses"]["recon"] for e in b["metadata"]["history"]["stage1"]]


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=3, identity={"run": 1})
    store.save(0, {"epoch": 0})
    store.save(1, {"epoch": 1})
    latest = store.latest_path()
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    state = store.load_latest()
    assert state["epoch"] == 0
    assert "unreadable" in caplog.text


def test_different_seed_gives_different_tensors(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=12)
    outs = []
    for seed in (0, 0, 1):
        cfg = tmp_path / f"c{len(outs)}.yaml"
        cfg.write_text(yaml.safe_dump({"seed": seed, "sae": {"n_free": 32, "stage1_epochs": 2},
                                       "devices": {"ids": "cpu"}}))
        out = tmp_path / f"run{len(outs)}/s1.pt"
        main(train_cmd(cfg, acts, out)[3:])  # in this process: nothing is killed here
        outs.append(torch.load(out, weights_only=True)["state_dict"]["W_enc"])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_a_config_key_the_job_was_not_given_is_named_not_a_json_traceback(tmp_path):
    """A job whose Snakemake read the config before a spec field existed gets that field
    as NotPassed: its run identity names the key instead of failing inside json."""
    import pytest

    from supervised_sae.config import NotPassed

    with pytest.raises(ValueError, match=r"sae.matryoshka_levels.*start it again"):
        CheckpointStore(tmp_path, identity={"levels": NotPassed("sae.matryoshka_levels")})
