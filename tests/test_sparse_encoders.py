"""Sparse free banks: TopK, BatchTopK and JumpReLU encoders, AuxK, the per_example L1,
activation normalisation, the sparse decode, baselines at matched sparsity, export."""

from __future__ import annotations

import pytest
import torch

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.registry import ENCODERS, encoder_spec
from supervised_sae.runs import evaluated_kinds, start_file
from supervised_sae.sae.encoders import BatchTopKEncoder, JumpReLUEncoder, TopKEncoder
from supervised_sae.sae.io import load_sae, save_sae
from supervised_sae.sae.losses import LossSettings, sae_losses
from supervised_sae.sae.model import SupervisedSAE
from supervised_sae.train.stages import (
    mean_free_l0,
    run_baseline,
    run_identity,
    run_stage1,
    run_stage2,
)
from supervised_sae.train.trainer import train_stage

FAST = dict(n_free=64, stage1_epochs=4, stage2_epochs=4, batch_size=16, eval_every=4,
            checkpoint_every=4, value_head="gated", dead_rows=64)


def sae_with(encoder, n_free=40, n_relations=3, d_model=16, seed=0) -> SupervisedSAE:
    return SupervisedSAE(d_model, n_free, n_relations, 5, seed=seed, encoder=encoder)


def test_topk_fires_exactly_k_free_slots_and_keeps_relation_slots_outside():
    sae = sae_with(TopKEncoder(n_free=40, k=5))
    with torch.no_grad():
        sae.b_enc[:40].fill_(10.0)  # every free pre-activation positive: exactly k fire
        sae.b_enc[40:].fill_(1.0)  # relation slots on, and not counted against k
    x = torch.randn(30, 16)
    z = sae.encode(x)
    assert ((z[:, :40] > 0).sum(1) == 5).all()
    assert (z[:, 40:] > 0).all()
    pre = x @ sae.W_enc + sae.b_enc
    top = torch.zeros(30, 40, dtype=torch.bool).scatter_(1, pre[:, :40].topk(5).indices, True)
    assert torch.equal(z[:, :40] > 0, top)  # the 5 largest, nowhere else


def test_a_selected_slot_that_is_not_positive_counts_as_inactive():
    sae = sae_with(TopKEncoder(n_free=40, k=5), n_relations=0)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # every pre-activation negative: TopK selects, ReLU zeroes
        sae.b_enc[:2] = 100.0
    z = sae.encode(torch.randn(8, 16))
    assert ((z > 0).sum(1) == 2).all()  # 3 of the 5 selected per row were <= 0


def test_batchtopk_threshold_gives_mean_l0_k_on_train_rows(activations, tmp_path):
    settings = SaeConfig.default(**FAST, encoder="batchtopk", k=6)
    run_stage1(activations, 1, tmp_path / "s1.pt", settings, seed=0)
    sae, meta = load_sae(tmp_path / "s1.pt")
    data = load_layer(activations, 1)
    l0 = mean_free_l0(sae, data, data.slices()["train_seen"])
    assert meta["encoder"] == "batchtopk" and float(sae.encoder.threshold) > 0
    assert abs(l0 - 6) <= 0.6, l0


def test_batchtopk_shares_one_budget_over_the_batch():
    encoder = BatchTopKEncoder(n_free=20, k=3)
    pre = torch.randn(8, 20)
    pre[0] += 10  # one row takes most of the batch's budget
    code = encoder.code(pre, 20)
    assert int((code.z > 0).sum()) == 3 * 8
    assert int((code.z[0] > 0).sum()) > 3


def test_jumprelu_threshold_gets_a_gradient_and_l0_falls_as_its_penalty_rises(activations,
                                                                               tmp_path):
    encoder = JumpReLUEncoder(n_free=10, threshold=0.5, bandwidth=0.5)
    pre = torch.randn(32, 10, requires_grad=True)
    encoder.terms(None, {"pre_free": pre}, pre)["l0"].backward()
    assert encoder.log_threshold.grad is not None and encoder.log_threshold.grad.abs().sum() > 0
    data = load_layer(activations, 1)
    l0 = {}
    for weight in (0.0, 1.0):
        settings = SaeConfig.default(**{**FAST, "stage1_epochs": 8}, encoder="jumprelu",
                                     normalize_activations="mean_norm", l0_weight=weight,
                                     jumprelu_threshold=0.05, jumprelu_bandwidth=0.05)
        run_stage1(activations, 1, tmp_path / f"s1_{weight}.pt", settings, seed=0)
        sae, _ = load_sae(tmp_path / f"s1_{weight}.pt")
        l0[weight] = mean_free_l0(sae, data, data.slices()["train_seen"])
    assert l0[1.0] < 0.5 * l0[0.0], l0


def test_auxk_revives_slots_that_die_without_it(activations, tmp_path):
    """Slots that start below 8 slots with a large bias never win a place among the
    top k and get no gradient; AuxK gives them the residual to reconstruct, and they
    learn to win places."""
    data = load_layer(activations, 1)
    dead = {}
    for weight in (0.0, 1 / 32):  # off, and the usual weight (the default)
        settings = SaeConfig.default(**{**FAST, "stage1_epochs": 30}, encoder="topk", k=4,
                                     auxk_weight=weight, auxk_k=16, lr=0.01)
        sae = SupervisedSAE(32, 64, 6, 20, seed=1, encoder=TopKEncoder(n_free=64, k=4),
                            value_head="gated")
        with torch.no_grad():
            sae.b_enc[:8] = 2.0  # the 56 other free slots start out of every top k
        train_stage(sae, data, "stage1", settings, 0, tmp_path / f"ckpt{weight}",
                    run_identity("stage1", data, settings, 0))
        fired = (sae.encode(data.x)[:, :64] > 0).any(0)
        dead[weight] = 1 - float(fired.float().mean())
    # measured: 0.72 of the free slots dead without AuxK, 0.48 with it
    assert dead[0.0] > 0.65 and dead[1 / 32] < dead[0.0] - 0.15, dead


def test_per_example_l1_is_the_decoder_weighted_sum_per_row():
    z = torch.tensor([[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 0.0, 0.0]])  # 3 free + 1 relation
    norms = torch.tensor([2.0, 0.5, 1.0])
    out = {"z": z, "x_hat": torch.zeros(2, 4), "free_decoder_norms": norms}
    settings = LossSettings({"recon": 0.0, "sparse": 1.0}, "exact", 0, True,
                            sparsity="per_example")
    _, parts = sae_losses(out, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long),
                          torch.zeros(2, dtype=torch.long), 3, ("sparse",), settings)
    # row 0: 1*2 + 2*1 = 4; row 1: 3*0.5 = 1.5; the relation slot is outside: mean 2.75
    assert float(parts["sparse"]) == pytest.approx(2.75)
    seed = LossSettings({"recon": 0.0, "sparse": 1.0}, "exact", 0, True)
    _, parts = sae_losses(out, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long),
                          torch.zeros(2, dtype=torch.long), 3, ("sparse",), seed)
    assert float(parts["sparse"]) == pytest.approx(6.5 / 8)  # the seed's mean over N x D


@pytest.mark.parametrize("head", ["gated", "lens"])
def test_a_normalised_sae_reads_and_writes_raw_activations(head, tmp_path):
    """Trained on s x, folded back: the saved SAE on raw x gives the normalised SAE's
    code and its reconstruction divided by s, and the same value logits."""
    from supervised_sae.lm.readout import Readout

    torch.manual_seed(0)
    sae = SupervisedSAE(16, 40, 3, 5, seed=0, encoder=TopKEncoder(n_free=40, k=6),
                        value_head=head)
    if head == "lens":
        sae.attach_readout(Readout("layer", 1e-5, torch.rand(16) + 0.5, torch.randn(16),
                                   torch.randn(5, 16), torch.randn(5)))
    x, s = torch.randn(12, 16) * 7, 0.37
    normalised = sae(x * s)
    sae.rescale_input(1 / s)  # fold back, as training does before saving
    save_sae(tmp_path / "n.pt", sae, {"layer": 0})
    raw = load_sae(tmp_path / "n.pt")[0](x)
    torch.testing.assert_close(raw["z"], normalised["z"])
    torch.testing.assert_close(raw["x_hat"], normalised["x_hat"] / s)
    torch.testing.assert_close(raw["logits"], normalised["logits"], rtol=1e-4, atol=1e-4)


def test_mean_norm_training_saves_an_sae_for_raw_activations(activations, tmp_path):
    settings = SaeConfig.default(**{**FAST, "stage1_epochs": 30}, encoder="topk", k=8,
                                 normalize_activations="mean_norm")
    run_stage1(activations, 1, tmp_path / "s1.pt", settings, seed=0)
    sae, meta = load_sae(tmp_path / "s1.pt")
    x = load_layer(activations, 1).x
    scale = meta["input_scale"]
    assert 0.1 < scale < 0.9  # these rows' mean norm is ~3 x sqrt(d_model)

    def fvu(rows):
        with torch.no_grad():
            return float(((rows - sae(rows)["x_hat"]) ** 2).sum()
                         / ((rows - rows.mean(0)) ** 2).sum())

    # it reconstructs raw rows (as well as the same run without scaling: 0.110), better
    # than the scaled rows it was trained on (measured 0.106 and 0.129)
    assert fvu(x) < 0.2 and fvu(x) < fvu(x * scale), (fvu(x), fvu(x * scale))


@pytest.mark.parametrize("encoder", [TopKEncoder(n_free=40, k=5),
                                     BatchTopKEncoder(n_free=40, k=5)])
def test_sparse_decode_equals_dense_decode_in_values_and_gradients(encoder):
    sae = sae_with(encoder).double()
    x = torch.randn(9, 16, dtype=torch.float64)
    code = sae.code(x)
    assert code.rows is not None
    upstream = torch.randn(2, 9, 16, dtype=torch.float64)

    def grads(decoded):
        x_hat, free = decoded
        loss = (x_hat * upstream[0]).sum() + (free * upstream[1]).sum()
        return [x_hat, free, *torch.autograd.grad(loss, (sae.W_enc_rows, sae.b_enc, sae.W_dec,
                                                         sae.b_dec))]

    sparse = grads(sae.decode_code(code)[:2])
    dense = grads(sae.decode_with_free_part(sae.code(x).z))
    for a, b in zip(sparse, dense, strict=True):
        torch.testing.assert_close(a, b)


def test_baselines_at_matched_sparsity(activations, tmp_path):
    # relu: the TopK baseline copies the supervised L0; topk: it is the unsupervised run
    assert evaluated_kinds(["joint"], True, "relu") == ["joint", "unsupervised", "topk"]
    assert evaluated_kinds(["joint"], True, "topk") == ["joint", "unsupervised"]
    assert evaluated_kinds(["joint"], True, "batchtopk") == ["joint", "unsupervised", "topk"]
    assert start_file("topk", ["joint"], 1, "", "relu") == "results/joint/layer1/sae_final.pt"
    assert start_file("topk", ["joint"], 1, "", "batchtopk") is None
    settings = SaeConfig.default(**FAST, encoder="batchtopk", k=7)
    run_baseline("topk", activations, 1, tmp_path / "topk", settings, seed=0)
    run_baseline("unsupervised", activations, 1, tmp_path / "unsup", settings, seed=0)
    topk, _ = load_sae(tmp_path / "topk/sae_final.pt")
    unsup, _ = load_sae(tmp_path / "unsup/sae_final.pt")
    assert (topk.encoder.name, topk.encoder.k) == ("topk", 7)  # the same k, not a copy of L0
    assert unsup.encoder.name == "batchtopk" and unsup.n_relations == 0


def test_stage2_of_a_sparse_encoder_stays_sparse(activations, tmp_path):
    settings = SaeConfig.default(**FAST, encoder="topk", k=5)
    run_stage1(activations, 1, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(activations, 1, "joint", tmp_path / "s1.pt", tmp_path / "joint", settings,
               seed=0)
    joint, meta = load_sae(tmp_path / "joint/sae_final.pt")
    losses = meta["history"]["stage2"][-1]["losses"]
    assert "auxk" in losses and "sparse" not in losses  # the L1 term is the seed's relu's
    z = joint.encode(load_layer(activations, 1).x)
    assert ((z[:, :64] > 0).sum(1) <= 5).all()


@pytest.mark.parametrize("name", list(ENCODERS))  # every registered encoder
def test_saelens_export_encodes_and_decodes_as_ours(name, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from supervised_sae.sae.export import export_saelens
    from supervised_sae.sae.model import make_encoder

    settings = SaeConfig.default(encoder=name, k=5, n_free=40).encoder_settings()
    sae = SupervisedSAE(16, 40, 3, 5, seed=0, encoder=make_encoder(name, settings, 40),
                        value_head="gated")
    with torch.no_grad():
        sae.encoder.calibrate([torch.randn(50, 40)])  # an inference threshold, where one is
        if name == "jumprelu":
            sae.encoder.log_threshold.copy_(torch.rand(40).mul(0.1).log())
    sae.eval()
    save_sae(tmp_path / "s.pt", sae, {"layer": 0, "mode": "joint", "stage": "joint",
                                      "relation_names": ["a", "b", "c"]})
    loaded = sae_lens.SAE.load_from_disk(str(export_saelens(tmp_path / "s.pt",
                                                           tmp_path / "out")))
    x = torch.randn(20, 16)
    z = sae.encode(x)
    with torch.no_grad():
        if encoder_spec(name).saelens == "topk":  # the free bank alone: relation slots
            # are outside its budget
            torch.testing.assert_close(loaded.encode(x), z[:, :40], rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(loaded.encode(x), z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loaded.decode(z), sae.decode(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.05, 0.9])  # the row index_add, and the dense product
def test_encoder_gradient_equals_the_plain_product(density):
    from supervised_sae.sae.decode import EncodeLinear

    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w_rows = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(30, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, 30, dtype=torch.float64) * (torch.rand(7, 30) < density)
    ours = torch.autograd.grad((EncodeLinear.apply(x, w_rows, b) * upstream).sum(),
                               (x, w_rows, b))
    plain = torch.autograd.grad(((x @ w_rows.t() + b) * upstream).sum(), (x, w_rows, b))
    for a, c in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, c)


def test_saved_files_keep_w_enc_as_d_model_by_slots(tmp_path):
    sae = sae_with(TopKEncoder(n_free=40, k=5))
    save_sae(tmp_path / "s.pt", sae, {"layer": 0})
    state = torch.load(tmp_path / "s.pt", weights_only=True)["state_dict"]
    assert state["W_enc"].shape == (16, 43) and "W_enc_rows" not in state
    assert torch.equal(load_sae(tmp_path / "s.pt")[0].W_enc, sae.W_enc)


def test_auxk_decodes_the_dead_slots_top_k_in_the_same_pass():
    """The dead slots' decode from the fused pass equals the plain formula, values and
    gradients: sum over the k_aux largest dead pre-activations of ReLU(pre) W_dec[slot]."""
    sae = sae_with(TopKEncoder(n_free=40, k=5)).double()
    x = torch.randn(9, 16, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[10:30] = True
    out = sae(x, auxk=(dead, 6))
    pre = sae.pre_activations(x)[:, :40]
    top = pre.masked_fill(~dead, float("-inf")).topk(6, dim=1)
    code = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    plain = code @ sae.W_dec[:40]
    torch.testing.assert_close(out["auxk_part"], plain)
    upstream = torch.randn(9, 16, dtype=torch.float64)
    ours = torch.autograd.grad((out["auxk_part"] * upstream).sum(),
                               (sae.W_enc_rows, sae.W_dec), retain_graph=True)
    theirs = torch.autograd.grad((plain * upstream).sum(), (sae.W_enc_rows, sae.W_dec))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_matryoshka_term_is_each_prefix_reconstruction_loss_summed():
    """The nested term, from the sparse triples, equals the prefixes' losses written
    out: decode the code with the free slots past the prefix set to 0."""
    from supervised_sae.sae.encoders import MatryoshkaEncoder

    torch.manual_seed(0)
    sae = sae_with(MatryoshkaEncoder(n_free=40, k=6, levels=3))
    sae.train()
    x = torch.randn(12, 16)
    out = sae(x, with_values=False, auxk=(sae.encoder.dead_slots(64), 8))
    term = sae.encoder.terms(sae, out, x)["matryoshka"]
    expected = 0.0
    for width in sae.encoder.prefix_widths(40):
        z = out["z"].clone()
        z[:, width:40] = 0  # the free slots past the prefix; relation slots stay
        expected += ((x - sae.decode(z)) ** 2).sum(1).mean()
    assert sae.encoder.prefix_widths(40) == [5, 10, 20]
    torch.testing.assert_close(term, expected, rtol=1e-5, atol=1e-5)
    term.backward()
    assert sae.W_dec.grad[:40].abs().sum() > 0


def test_matryoshka_training_makes_its_first_slots_reconstruct_alone(activations, tmp_path):
    """With the nested term, the bank's first eighth reconstructs far better on its own
    than the same prefix of a BatchTopK SAE trained without it."""
    from supervised_sae.sae.encoders import MatryoshkaEncoder

    data = load_layer(activations, 1)
    rows = data.slices()["train_seen"]
    fvu = {}
    for weight in (0.0, 1.0):
        settings = SaeConfig.default(**{**FAST, "stage1_epochs": 12}, encoder="matryoshka",
                                     k=8, matryoshka_weight=weight)
        run_stage1(activations, 1, tmp_path / f"s1_{weight}.pt", settings, seed=0)
        sae, _ = load_sae(tmp_path / f"s1_{weight}.pt")
        assert isinstance(sae.encoder, MatryoshkaEncoder)
        width = sae.encoder.prefix_widths(sae.n_free)[0]
        with torch.no_grad():
            z = sae.encode(data.x[rows])
            z[:, width:] = 0
            x = data.x[rows]
            fvu[weight] = float(((x - sae.decode(z)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert fvu[1.0] < 0.8 * fvu[0.0], fvu
