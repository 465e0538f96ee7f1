"""A rerun into the same folder follows the config and the data, never a stale checkpoint.

Each case trains once, changes one thing that changes the result, and trains again into
the same folder through the CLI: the run must start afresh, and its tensors must equal a
fresh run's with the new setting (so the metadata that records the setting is true).
"""

from __future__ import annotations

import io
import logging

import h5py
import pytest
import torch
import yaml
from conftest import write_structured_activations

from supervised_sae.cli import main
from supervised_sae.data.store_reader import load_layer
from supervised_sae.data.store_writer import write_activation_file

SAE = {"n_free": 32, "stage1_epochs": 3, "stage2_epochs": 2, "batch_size": 16,
       "checkpoint_every": 1, "indep_policy": "skip_above_threshold", "indep_threshold": 16,
       "value_head": "gated"}  # needs no LM folder


def write_config(path, seed=0, **sae):
    path.write_text(yaml.safe_dump({"seed": seed, "sae": {**SAE, **sae},
                                    "devices": {"ids": "cpu"}}))
    return path


def train(config, acts, out, mode="stage1", init=None):
    """The CLI's train command, in this process (nothing here is killed); its log."""
    args = ["--config", str(config), "train", "--activations", str(acts), "--layer", "0",
            "--mode", mode, "--out", str(out)]
    if init:
        args += ["--init", str(init)]
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    logging.getLogger("supervised_sae").addHandler(handler)
    try:
        main(args)
    finally:
        logging.getLogger("supervised_sae").removeHandler(handler)
    return text.getvalue()


def saved(path):
    blob = torch.load(path, weights_only=True)
    return blob["state_dict"], blob["metadata"]


def perturb_layer(acts):
    """Same file name, prompts and model path; other activations (a retrained LM),
    written as extraction writes them (through the store's writer, hashes and all)."""
    with h5py.File(acts, "r") as f:
        layers = {int(k): f[f"layers/{k}"][:] for k in f["layers"]}
        labels = {k: f[k][:] for k in ("relation", "person", "split", "template",
                                        "template_heldout")}
        names = [s.decode() for s in f["relation_names"][:]]
        data = load_layer(acts, 0)
        attrs = {k: f.attrs[k] for k in ("model_path", "prompts_sha256")}
    layers[0] = layers[0] * 1.5
    answers = data.answer.tolist()
    write_activation_file(acts, layers, relation_names=names,
                          answer_ids=[data.value_tokens[a] for a in answers],
                          answer_texts=[data.answer_values[a] for a in answers],
                          **labels, **attrs)


CHANGES = {
    "learning rate": ({"lr": 3e-3}, 0, False, "sae.lr"),
    "a loss weight": ({"weights": {"align": 0.3}}, 0, False, "sae.weights.align"),
    "indep policy": ({"indep_policy": "exact"}, 0, False, "sae.indep_policy"),
    "seed": ({}, 1, False, "seed"),
    "activations": ({}, 0, True, "activations_sha256"),
}


# stage 1 optimises reconstruction alone: loss weights and the indep policy cannot change it
CASES = [(c, "joint") for c in CHANGES] + [(c, "stage1") for c in
                                           ("learning rate", "seed", "activations")]


@pytest.mark.parametrize("change,mode", CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_a_changed_setting_or_input_retrains_from_scratch(tmp_path, change, mode):
    sae, seed, new_acts, key = CHANGES[change]
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=12)
    old_cfg = write_config(tmp_path / "old.yaml")
    new_cfg = write_config(tmp_path / "new.yaml", seed=seed, **sae)
    stage1 = tmp_path / "stage1/s1.pt"
    train(old_cfg, acts, stage1)

    def target(folder):
        return folder / "s1.pt" if mode == "stage1" else folder / "sae_final.pt"

    run, fresh = tmp_path / "run", tmp_path / "fresh"
    init = None if mode == "stage1" else stage1
    train(old_cfg, acts, target(run) if mode == "stage1" else run, mode, init)
    before, _ = saved(target(run))
    if new_acts:
        perturb_layer(acts)
        if init is not None:  # as the workflow does: a stage-2 init must match its inputs
            train(old_cfg, acts, stage1)
    log = train(new_cfg, acts, target(run) if mode == "stage1" else run, mode, init)
    assert "moved to" in log and key in log, log  # says which setting differs
    assert "resumed" not in log
    after, meta = saved(target(run))
    train(new_cfg, acts, target(fresh) if mode == "stage1" else fresh, mode, init)
    reference, _ = saved(target(fresh))
    assert any(not torch.equal(before[k], after[k]) for k in after), "old tensors kept"
    for k in after:
        assert torch.equal(after[k], reference[k]), k  # exactly a fresh run's tensors
    assert meta["settings"]["seed"] == seed
    assert meta["settings"]["lr"] == sae.get("lr", SAE.get("lr", 1e-3))


def test_a_new_init_sae_retrains_stage2(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=12)
    cfg = write_config(tmp_path / "c.yaml")
    stage1 = tmp_path / "stage1/s1.pt"
    train(cfg, acts, stage1)
    train(cfg, acts, tmp_path / "joint", "joint", stage1)
    # stage 1 retrained with another learning rate into the same file
    train(write_config(tmp_path / "other.yaml", lr=3e-3), acts, tmp_path / "s1b/s1.pt")
    stage1.write_bytes((tmp_path / "s1b/s1.pt").read_bytes())
    log = train(cfg, acts, tmp_path / "joint", "joint", stage1)
    assert "init_sha256" in log and "resumed" not in log


def test_an_unchanged_rerun_resumes_and_changes_nothing(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=12)
    cfg = write_config(tmp_path / "c.yaml")
    out = tmp_path / "run/s1.pt"
    train(cfg, acts, out)
    before, _ = saved(out)
    # bookkeeping settings are not part of a run's identity
    log = train(write_config(tmp_path / "c2.yaml", eval_every=1, keep_checkpoints=5), acts, out)
    assert "resumed from" in log and "moved to" not in log
    after, _ = saved(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
