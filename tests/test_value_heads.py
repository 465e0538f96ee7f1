"""The `lens` value head reads answers the way the LM does, through its own final norm
and unembedding; its frozen copies of those stay frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_hash, write_structured_activations
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.lm.load import load_lm, load_readout
from supervised_sae.lm.readout import final_readout
from supervised_sae.lm.tokenizer import build_word_tokenizer
from supervised_sae.sae.io import load_sae
from supervised_sae.sae.model import SupervisedSAE
from supervised_sae.train.stages import run_stage1, run_stage2


def tiny_lm(d_model: int = 32, vocab: int = 160) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=d_model, n_layer=2,
                        n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def test_lens_head_at_the_identity_gives_the_lms_own_logits():
    lm = tiny_lm()
    answers = [3, 17, 42, 99, 120]
    ids = torch.randint(0, 160, (6, 9))
    captured = {}
    lm.transformer.h[-1].register_forward_hook(
        lambda _m, _i, out: captured.update(h=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        lm_logits = lm(input_ids=ids).logits[:, -1, answers]
    final_block = captured["h"][:, -1]  # the last block's output, before the final norm

    sae = SupervisedSAE(32, 16, 6, len(answers), value_head="lens")
    sae.attach_readout(final_readout(lm, answers))
    with torch.no_grad():
        sae.head.c.zero_()  # input to the head: A_r x_hat_free + c_r = x_hat_free
        z = torch.zeros(6, 16 + 6)
        z[torch.arange(6), 16 + torch.arange(6)] = 1.0  # one relation slot at 1 per row
        logits = sae.value_logits(z, free_part=final_block)
    torch.testing.assert_close(logits, lm_logits, rtol=1e-5, atol=1e-5)


@pytest.fixture
def lm_folder(tmp_path):
    folder = tmp_path / "lm"
    tiny_lm().save_pretrained(folder)
    build_word_tokenizer(["a b c"], []).save_pretrained(folder)
    return folder


def test_frozen_readout_gets_no_gradient_and_does_not_change(tmp_path, lm_folder):
    # answer_token_id = answer + 100 in the synthetic file: ids 100..119 of a 160-token LM
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=24,
                                        lm_sha256=lm_hash(lm_folder))
    settings = SaeConfig.default(n_free=32, stage1_epochs=2, stage2_epochs=3, batch_size=16,
                                 value_head="lens")
    run_stage1(acts, 0, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(acts, 0, "joint", tmp_path / "s1.pt", tmp_path / "joint", settings, seed=0,
               model_dir=lm_folder)
    trained, meta = load_sae(tmp_path / "joint/sae_final.pt")
    assert meta["value_head"] == "lens" and meta["value_head_options"]["readout_norm"] == "layer"
    readout = load_readout(lm_folder, load_layer(acts, 0))
    torch.testing.assert_close(trained.head.unembed, readout.unembed, rtol=0, atol=0)
    torch.testing.assert_close(trained.head.readout_weight, readout.weight, rtol=0, atol=0)
    assert not any(p is trained.head.unembed for p in trained.parameters())
    assert {id(p) for p in trained.value_parameters()} == {id(trained.head.A), id(trained.head.c)}
    # the lens trains
    assert not torch.equal(trained.head.A, torch.eye(32).expand_as(trained.head.A))
    # separate_value trains A and c on the frozen SAE; the readout is attached afresh
    run_stage2(acts, 0, "separate_activation", tmp_path / "s1.pt", tmp_path / "fa", settings,
               seed=0, model_dir=lm_folder)
    run_stage2(acts, 0, "separate_value", tmp_path / "fa/sae_final.pt", tmp_path / "sv",
               settings, seed=0, model_dir=lm_folder)
    frozen, _ = load_sae(tmp_path / "fa/sae_final.pt")
    values, _ = load_sae(tmp_path / "sv/sae_final.pt")
    assert torch.equal(frozen.W_enc, values.W_enc)
    assert torch.equal(values.head.unembed, readout.unembed)


def test_lens_without_the_lm_is_refused(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=8)
    settings = SaeConfig.default(n_free=8, stage1_epochs=1, value_head="lens")
    run_stage1(acts, 0, tmp_path / "s1.pt", settings, seed=0)
    with pytest.raises(ValueError, match="needs the LM"):
        run_stage2(acts, 0, "joint", tmp_path / "s1.pt", tmp_path / "j", settings, seed=0)


def test_model_of_an_unknown_family_names_its_folder_and_type(tmp_path):
    from transformers import PhiConfig, PhiForCausalLM

    folder = tmp_path / "phi"
    PhiForCausalLM(PhiConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
    build_word_tokenizer(["a b c"], []).save_pretrained(folder)
    with pytest.raises(ValueError, match=f"{folder}: model_type 'phi' is not a supported"):
        load_lm(folder)


def test_answers_never_seen_as_training_labels(tmp_path):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=24)
    data = load_layer(acts, 0)
    unseen = data.answer_unseen_in_training()
    train = data.slices()["train_seen"]
    assert not unseen[train].any()  # a training row's answer is a training label
    seen = {(int(r), int(a)) for r, a in zip(data.relation[train], data.answer[train],
                                              strict=True)}
    for row in torch.nonzero(unseen).squeeze(1).tolist():
        assert (int(data.relation[row]), int(data.answer[row])) not in seen
    assert unseen.any()


def test_lens_prior_holds_the_head_near_the_lms_own_readout(tmp_path, lm_folder):
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=24,
                                        lm_sha256=lm_hash(lm_folder))
    distance = {}
    for weight in (0.0, 10.0):
        settings = SaeConfig.default(n_free=32, stage1_epochs=2, stage2_epochs=3,
                                     batch_size=16, value_head="lens", lens_prior=weight)
        run_stage1(acts, 0, tmp_path / f"s1_{weight}.pt", settings, seed=0)
        run_stage2(acts, 0, "joint", tmp_path / f"s1_{weight}.pt", tmp_path / f"j{weight}",
                   settings, seed=0, model_dir=lm_folder)
        trained, meta = load_sae(tmp_path / f"j{weight}/sae_final.pt")
        distance[weight] = trained.value_penalty().item()
        assert "lens_prior" in meta["history"]["stage2"][0]["losses"]
    fresh = SupervisedSAE(32, 32, 6, 20, value_head="lens")
    fresh.attach_readout(load_readout(lm_folder, load_layer(acts, 0)))
    assert fresh.value_penalty().item() == 0.0  # it starts at the logit lens
    assert 0 < distance[10.0] < 0.2 * distance[0.0]


@pytest.mark.parametrize("recorded", ["another", None], ids=["another LM", "no record"])
def test_lens_head_refuses_an_lm_that_did_not_make_the_activations(tmp_path, lm_folder,
                                                                   recorded):
    """Another LM of the same width, or a file that records none, is refused by name
    before training: nothing is written."""
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=8,
                                        lm_sha256="0" * 64 if recorded else None)
    settings = SaeConfig.default(n_free=8, stage1_epochs=1, stage2_epochs=1,
                                 value_head="lens")
    run_stage1(acts, 0, tmp_path / "s1.pt", settings, seed=0)
    message = (f"{lm_folder} is not the LM {acts} was extracted with" if recorded
               else f"{acts} records no lm_sha256")
    with pytest.raises(ValueError, match=message):
        run_stage2(acts, 0, "joint", tmp_path / "s1.pt", tmp_path / "j", settings, seed=0,
                   model_dir=lm_folder)
    assert not (tmp_path / "j").exists()
