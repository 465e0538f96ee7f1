"""Modes own exactly their parameters; stages chain; training learns the relation."""

import json

import pytest
import torch

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.sae.io import load_sae
from supervised_sae.sae.model import SupervisedSAE
from supervised_sae.train.stages import run_stage1, run_stage2

# the gated value head: these tests need no LM (the lens head has tests of its own)
SETTINGS = dict(n_free=48, stage1_epochs=3, stage2_epochs=6, batch_size=16, eval_every=3,
                checkpoint_every=2, indep_policy="exact", value_head="gated")


def tensors(path):
    return load_sae(path)[0].state_dict()


@pytest.fixture
def trained(tmp_path, activations):
    settings = SaeConfig.default(**SETTINGS)
    stage1 = tmp_path / "stage1/layer1/sae_stage1.pt"
    run_stage1(activations, 1, stage1, settings, seed=0)
    for mode, folder in (("joint", "joint"), ("separate_activation", "feature_activation")):
        run_stage2(activations, 1, mode, stage1, tmp_path / folder / "layer1", settings, seed=0)
    run_stage2(activations, 1, "separate_value",
               tmp_path / "feature_activation/layer1/sae_final.pt",
               tmp_path / "next_token_prediction/layer1", settings, seed=0)
    return tmp_path


ENC_DEC = {"W_enc", "b_enc", "W_dec", "b_dec"}
VALUE = {"head.V", "head.V_bias"}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_each_mode_changes_exactly_its_parameters(trained):
    init = SupervisedSAE(32, 48, 6, 20, seed=1).state_dict()  # stage 1's init (seed + layer)
    stage1 = tensors(trained / "stage1/layer1/sae_stage1.pt")
    assert changed(init, stage1) == ENC_DEC  # recon only: value heads untouched
    joint = tensors(trained / "joint/layer1/sae_final.pt")
    assert changed(stage1, joint) == ENC_DEC | VALUE
    sep_act = tensors(trained / "feature_activation/layer1/sae_final.pt")
    assert changed(stage1, sep_act) == ENC_DEC
    sep_val = tensors(trained / "next_token_prediction/layer1/sae_final.pt")
    assert changed(sep_act, sep_val) == VALUE


def test_stage2_starts_from_stage1(tmp_path, activations):
    settings = SaeConfig.default(**{**SETTINGS, "stage2_epochs": 1, "lr": 1e-12})
    stage1 = tmp_path / "s1.pt"
    run_stage1(activations, 0, stage1, SaeConfig.default(**SETTINGS), seed=0)
    run_stage2(activations, 0, "joint", stage1, tmp_path / "joint", settings, seed=0)
    a, b = tensors(stage1), tensors(tmp_path / "joint/sae_final.pt")
    n_free = SETTINGS["n_free"]
    # a near-zero learning rate keeps stage 2 at stage 1's weights; relation slots start
    # from their reset (reading nothing, firing at 0.5)
    torch.testing.assert_close(a["W_dec"], b["W_dec"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(a["W_enc"][:, :n_free], b["W_enc"][:, :n_free], rtol=1e-6,
                               atol=1e-8)
    torch.testing.assert_close(a["b_enc"][:n_free], b["b_enc"][:n_free], rtol=1e-6, atol=1e-8)
    assert b["W_enc"][:, n_free:].abs().max() < 1e-6
    torch.testing.assert_close(b["b_enc"][n_free:], torch.full((6,), 0.5))


def test_outputs_metadata_and_history(trained):
    blob = torch.load(trained / "joint/layer1/sae_final.pt", weights_only=True)
    meta = blob["metadata"]
    assert meta["mode"] == "joint" and meta["layer"] == 1
    assert meta["n_free"] == 48 and meta["n_relations"] == 6 and meta["d_model"] == 32
    assert meta["relation_names"][1] == "birth_city"
    history = json.loads((trained / "joint/layer1/training_history.json").read_text())
    assert [len(history["stages"][s]) for s in ("stage1", "stage2")] == [3, 6]
    last = history["stages"]["stage2"][-1]
    assert set(last["losses"]) == {"recon", "sparse", "align", "indep", "ortho", "value"}
    assert {"train_seen", "test_seen", "train_heldout", "test_heldout"} <= set(last["eval"])
    assert last["examples_per_s"] > 0 and "indep_excess" in last["indep_diagnostics"]
    sv = json.loads((trained / "next_token_prediction/layer1/training_history.json").read_text())
    assert set(sv["stages"]["stage2"][-1]["losses"]) == {"value"}
    assert list(sv["stages"]["frozen_sae"]) == ["stage1", "stage2"]
    # checkpoints kept beside the outputs, newest few only
    assert 1 <= len(list((trained / "joint/layer1/checkpoints").glob("*.pt"))) <= 3


def test_joint_training_binds_relations(tmp_path, activations):
    settings = SaeConfig.default(**{**SETTINGS, "stage2_epochs": 30, "eval_every": 30})
    run_stage1(activations, 0, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(activations, 0, "joint", tmp_path / "s1.pt", tmp_path / "joint", settings, seed=0)
    history = json.loads((tmp_path / "joint/training_history.json").read_text())
    evals = history["stages"]["stage2"][-1]["eval"]
    assert evals["test_seen"]["slot_accuracy"] >= 0.95  # held-out people
    assert evals["train_seen"]["value_accuracy"] > 0.5  # chance is 1/20


def test_wrong_init_is_rejected(tmp_path, trained, activations):
    with pytest.raises(ValueError, match="needs stage 'stage1' of layer 0"):
        run_stage2(activations, 0, "joint", trained / "stage1/layer1/sae_stage1.pt",
                   tmp_path / "x", SaeConfig.default(**SETTINGS), seed=0)


def test_non_finite_loss_names_stage_epoch_step_and_component(tmp_path, activations):
    settings = SaeConfig.default(**{**SETTINGS, "lr": 1e30})
    with pytest.raises(FloatingPointError, match=r"stage1, epoch \d+, step \d+: component"):
        run_stage1(activations, 0, tmp_path / "s1.pt", settings, seed=0)
    assert not (tmp_path / "s1.pt").exists()


def test_unit_decoder_norm_and_slot_only_heads(tmp_path, activations):
    settings = SaeConfig.default(**{**SETTINGS, "decoder_norm": "unit", "value_head": "slot_only"})
    run_stage1(activations, 0, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(activations, 0, "joint", tmp_path / "s1.pt", tmp_path / "j", settings, seed=0)
    model, meta = load_sae(tmp_path / "j/sae_final.pt")
    assert meta["value_head"] == "slot_only"
    norms = model.W_dec[: model.n_free].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_layer_data_slices(activations):
    data = load_layer(activations, 0)
    slices = data.slices()
    assert sum(len(v) for v in slices.values()) == len(data.x)
    assert bool((data.split[slices["test_seen"]] == 1).all())


def test_seed_policy_skips_indep_above_the_threshold(tmp_path, activations):
    # n_free 48 above a threshold of 10: the seed's policy trains without indep
    settings = SaeConfig.default(**{**SETTINGS, "indep_policy": "skip_above_threshold",
                                "indep_threshold": 10, "stage2_epochs": 2})
    run_stage1(activations, 0, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(activations, 0, "joint", tmp_path / "s1.pt", tmp_path / "j", settings, seed=0)
    history = json.loads((tmp_path / "j/training_history.json").read_text())
    last = history["stages"]["stage2"][-1]
    assert "indep" not in last["losses"] and "ortho" in last["losses"]
    assert "indep_diagnostics" not in last


def test_fused_decode_has_the_gradients_of_the_plain_formula():
    """The one-matmul decode must give exactly the gradients of x_hat = z W + b and
    free_part = z_free W_free, for every parameter, including the relation rows."""
    sae = SupervisedSAE(5, 7, 3, 4).double()
    z = torch.rand(6, 10, dtype=torch.float64, requires_grad=True)
    x_hat, free = sae.decode_with_free_part(z)
    torch.testing.assert_close(x_hat, z @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(free, z[:, :7] @ sae.W_dec[:7])
    upstream = torch.randn(2, 6, 5, dtype=torch.float64)
    fused = torch.autograd.grad((x_hat * upstream[0]).sum() + (free * upstream[1]).sum(),
                                (z, sae.W_dec, sae.b_dec))
    plain_x_hat, plain_free = z @ sae.W_dec + sae.b_dec, z[:, :7] @ sae.W_dec[:7]
    plain = torch.autograd.grad((plain_x_hat * upstream[0]).sum()
                                + (plain_free * upstream[1]).sum(), (z, sae.W_dec, sae.b_dec))
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b)


def test_topk_baseline_matches_the_supervised_l0(trained, activations, tmp_path):
    from supervised_sae.train.stages import mean_free_l0, run_baseline

    joint = trained / "joint/layer1/sae_final.pt"
    settings = SaeConfig.default(**SETTINGS)
    run_baseline("topk", activations, 1, tmp_path / "topk", settings, seed=0, l0_from=joint)
    topk, meta = load_sae(tmp_path / "topk/sae_final.pt")
    data = load_layer(activations, 1)
    train = data.slices()["train_seen"]
    k = round(mean_free_l0(load_sae(joint)[0], data, train))
    assert meta["encoder"] == "topk" and meta["n_relations"] == 0
    assert meta["encoder_settings"]["k"] == topk.encoder.k == max(k, 1)
    assert ((topk.encode(data.x) > 0).sum(1) <= topk.encoder.k).all()
    assert mean_free_l0(topk, data, train) <= topk.encoder.k


def test_runs_with_labels_keep_the_epoch_best_on_validation_people(tmp_path):
    from conftest import write_structured_activations

    from supervised_sae.train.trainer import evaluate_accuracy

    activations = write_structured_activations(tmp_path / "a.h5", n_people=32,
                                               validation_people=6)
    settings = SaeConfig.default(**{**SETTINGS, "stage2_epochs": 6})
    stage1 = tmp_path / "s1.pt"
    run_stage1(activations, 1, stage1, settings, seed=3)
    run_stage2(activations, 1, "joint", stage1, tmp_path / "joint", settings, seed=3)

    data = load_layer(activations, 1)
    validation = data.validation_rows()
    assert set(data.person[validation].tolist()) == set(range(26, 32))
    for rows in data.slices().values():  # validation people are in no reported slice
        assert not (data.split[rows] == 2).any()
    epochs = json.loads((tmp_path / "joint/training_history.json").read_text())
    epochs = epochs["stages"]["stage2"]
    # joint trains slots and values: the score is the mean of both accuracies
    scores = [e["validation"]["score"] for e in epochs]
    for e in epochs:
        v = e["validation"]
        assert v["score"] == pytest.approx((v["slot_accuracy"] + v["value_accuracy"]) / 2)
    best = max(scores)
    chosen = epochs[-1]["chosen_epoch"]
    assert chosen == max(k for k, s in enumerate(scores) if s == best) + 1  # ties: later
    model, _ = load_sae(tmp_path / "joint/sae_final.pt")
    model.eval()
    kept = evaluate_accuracy(model, data, validation, True)
    assert (kept["slot_accuracy"] + kept["value_accuracy"]) / 2 == pytest.approx(best)
