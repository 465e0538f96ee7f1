"""Each model family read right, on a tiny randomly initialised model of that family."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as hf

from supervised_sae.layers import EMBEDDINGS
from supervised_sae.lm.family import (
    FAMILIES,
    UnsupportedModelError,
    family_of,
    folder_depth,
)
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.readout import apply_readout, final_readout

N_LAYERS, WIDTH, VOCAB = 3, 16, 40
DECODER = dict(num_hidden_layers=N_LAYERS, hidden_size=WIDTH, intermediate_size=32,
               num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=32)
CONFIGS = {
    "gpt2": lambda: hf.GPT2Config(n_layer=N_LAYERS, n_embd=WIDTH, n_head=2, vocab_size=VOCAB,
                                  n_positions=32, bos_token_id=0, eos_token_id=0),
    "llama": lambda: hf.LlamaConfig(num_key_value_heads=2, **DECODER),
    "mistral": lambda: hf.MistralConfig(num_key_value_heads=2, sliding_window=None, **DECODER),
    "qwen2": lambda: hf.Qwen2Config(num_key_value_heads=2, **DECODER),
    "gemma": lambda: hf.GemmaConfig(num_key_value_heads=2, head_dim=8, **DECODER),
    "gpt_neox": lambda: hf.GPTNeoXConfig(**DECODER),
    "opt": lambda: hf.OPTConfig(ffn_dim=32, word_embed_proj_dim=WIDTH,
                                **{k: v for k, v in DECODER.items() if k != "intermediate_size"}),
}


def tiny_model(model_type: str):
    torch.manual_seed(0)
    model = hf.AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()
    norm = family_of(model).final_norm(model)
    with torch.no_grad():  # a norm that is not the identity, so reading it wrong shows
        norm.weight.normal_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()
    return model


def test_every_model_type_of_every_family_has_its_own_tiny_model():
    """Not only each family's first name: a model_type added to a family's list (as
    mistral is Llama's) is read through a model of that type, or this fails."""
    assert set(FAMILIES) <= set(CONFIGS)
    for model_type in FAMILIES:
        assert CONFIGS[model_type]().model_type == model_type


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_family_reads_blocks_residuals_and_final_norm(model_type):
    model = tiny_model(model_type)
    family = family_of(model)
    blocks = family.blocks(model)
    assert len(blocks) == N_LAYERS
    ids = torch.tensor([[1, 5, 7, 9, 3, 2]])
    caught: dict[int, torch.Tensor] = {}
    handles = [hook_residual(blocks, layer, lambda h, layer=layer: caught.update({layer: h}))
               for layer in [EMBEDDINGS, *range(N_LAYERS)]]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(caught[EMBEDDINGS], out.hidden_states[0], rtol=0, atol=0)
    for layer in range(N_LAYERS - 1):
        torch.testing.assert_close(caught[layer], out.hidden_states[layer + 1], rtol=0, atol=0)
    # the last entry of hidden_states comes after the final norm: compare through it
    readout = final_readout(model, list(range(VOCAB)))
    torch.testing.assert_close(apply_readout(readout, caught[N_LAYERS - 1]), out.logits,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_family_depth_from_a_saved_config(model_type, tmp_path):
    CONFIGS[model_type]().save_pretrained(tmp_path)
    assert folder_depth(tmp_path) == N_LAYERS


@pytest.mark.parametrize("model_type", ["cohere", "gemma2", "t5"])
def test_unknown_family_is_refused_by_name(model_type, tmp_path):
    from supervised_sae.config import ConfigError, check_config, default_dict

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type,
                                                      "num_hidden_layers": 2}))
    with pytest.raises(UnsupportedModelError, match=f"'{model_type}'.*supported: .*gpt2"):
        folder_depth(tmp_path)
    config = default_dict()
    config["lm"]["pretrained"] = str(tmp_path)
    with pytest.raises(ConfigError, match=f"lm.pretrained=.*model_type '{model_type}' is not"):
        check_config(config)


def test_gemma_norm_read_without_its_offset_would_disagree():
    """The (1 + w) scale matters: the read-out with w alone differs from the logits."""
    model = tiny_model("gemma")
    readout = final_readout(model, list(range(VOCAB)))
    readout.weight -= 1.0  # as a plain RMSNorm would read it
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    caught = {}
    handle = hook_residual(family_of(model).blocks(model), N_LAYERS - 1,
                           lambda h: caught.update(h=h))
    with torch.no_grad():
        model(ids)
    handle.remove()
    assert not torch.allclose(apply_readout(readout, caught["h"]), out.logits, atol=1e-3)


def test_export_hook_names_follow_transformer_lens():
    """An SAE of the embedding output reads block 0's input, not "blocks.-1"."""
    from supervised_sae.lm.family import ModelFamily

    assert ModelFamily.hook_name(EMBEDDINGS) == "blocks.0.hook_resid_pre"
    assert ModelFamily.hook_name(3) == "blocks.3.hook_resid_post"


def test_sae_job_memory_uses_the_pretrained_models_width(tmp_path):
    from supervised_sae.config import check_config, default_dict
    from supervised_sae.config.implied import sae_job_memory_mb

    tiny_model("llama").save_pretrained(tmp_path)  # width 16, not lm.n_embd's 768
    config = default_dict()
    small = check_config(config)
    config["lm"]["pretrained"] = str(tmp_path)
    narrow = check_config(config)
    slots = narrow.sae.n_free + len(narrow.data.relations)
    prompts = narrow.data.n_people * len(narrow.data.relations) * 5
    expected = int(1024 + (2 * WIDTH * slots * 4 * 5 + prompts * WIDTH * 4) / 2**20)
    assert sae_job_memory_mb(narrow) == expected < sae_job_memory_mb(small)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_read_out_check_passes_for_each_family(model_type):
    from supervised_sae.lm.readout import check_final_readout

    check_final_readout(tiny_model(model_type), model_type)


def test_a_family_read_wrongly_is_refused_at_load(tmp_path, monkeypatch):
    """A registered family whose description of the norm is wrong (here: Llama read as if
    its RMSNorm scaled by 1 + w) is refused when a model loads, not read silently."""
    from supervised_sae.lm import family
    from supervised_sae.lm.load import load_lm
    from supervised_sae.lm.tokenizer import build_word_tokenizer

    class MisreadLlama(family.Llama):
        norm_weight_offset = 1.0

    monkeypatch.setitem(family.FAMILIES, "llama", MisreadLlama)
    folder = tmp_path / "llama"
    tiny_model("llama").save_pretrained(folder)
    build_word_tokenizer(["a b c"], []).save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="a llama model whose final norm"):
        load_lm(folder)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_prefix_cached_edits_equal_full_reruns_in_each_family(model_type):
    """The edit runner's KV cache, 4D mask and position ids, in every family's own
    attention: the same next tokens as rerunning each edited prompt in full, and the
    same greedy generations."""
    import numpy as np

    from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
    from supervised_sae.evaluation.edit_spec import NO_TOKEN, Edit
    from supervised_sae.evaluation.interventions import predictions_with_edit

    model = tiny_model(model_type)
    blocks = family_of(model).blocks(model)
    g = torch.Generator().manual_seed(3)
    encoded = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (4, 4, 6, 2, 6, 1)]
    prompt_of = np.array([0, 1, 2, 3, 4, 5, 0, 2, 2, 4])
    push = torch.randn(len(prompt_of), WIDTH, generator=g) * 3

    def fn(h, jobs):
        return h + push[jobs]

    for layer in (EMBEDDINGS, 1):
        runner = PrefixCachedRunner(model, blocks, layer, encoded, "cpu", batch_size=2)
        cached, clean = runner.run(prompt_of, [Edit(fn), Edit(None)])
        jobs = [encoded[i] for i in prompt_of]
        assert cached[:, 0].tolist() == predictions_with_edit(
            model, blocks, layer, jobs, 0, fn, "cpu").tolist()
        assert clean[:, 0].tolist() == predictions_with_edit(
            model, blocks, layer, jobs, 0, None, "cpu").tolist()
    generated = runner.run(prompt_of[:4], [Edit(None, new_tokens=4)])[0]
    for row, tokens in zip(prompt_of[:4], generated.tolist(), strict=True):
        ids = list(encoded[row])
        for token in tokens:
            assert token != NO_TOKEN  # no stop token given: every step runs
            with torch.no_grad():
                assert token == int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
