"""Inference helpers: the blocked tanh GELU gives a loaded LM the same outputs, and
batches are padded correctly."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import NewGELUActivation

from supervised_sae.lm.fast_gelu import _MIN_ELEMENTS, GELUTanh, TanhGELU
from supervised_sae.lm.load import load_lm, next_token_ids, pad_batch
from supervised_sae.lm.tokenizer import build_word_tokenizer


@pytest.mark.parametrize("shape", [(3, 5, 16), (7, 41, 1000), (300_001,)])
def test_tanh_gelu_equals_pytorch_tanh_gelu(shape):
    x = torch.randn(shape) * 4  # reaches both tails, where tanh saturates
    with torch.inference_mode():
        ours = TanhGELU()(x)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, F.gelu(x, approximate="tanh"), rtol=1e-6, atol=1e-6)


def test_tanh_gelu_keeps_gradients_when_training():
    x = torch.randn(64, 2048, requires_grad=True)
    assert x.numel() >= _MIN_ELEMENTS
    TanhGELU()(x).sum().backward()
    y = x.detach().clone().requires_grad_()
    F.gelu(y, approximate="tanh").sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh"])
def test_load_lm_swaps_the_activation_and_keeps_the_outputs(tmp_path, activation):
    tokenizer = build_word_tokenizer(["a b c d e f g h"] * 3, [])
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2,
                        n_head=2, activation_function=activation)
    torch.manual_seed(0)
    original = GPT2LMHeadModel(config).eval()
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_lm(tmp_path)
    acts = [m for m in loaded.modules() if isinstance(m, TanhGELU | GELUTanh | NewGELUActivation)]
    assert len(acts) == 2 and all(isinstance(m, TanhGELU) for m in acts)
    ids = torch.randint(0, len(tokenizer), (48, 50))  # MLP input 48 x 50 x 128: blocked path
    assert ids.numel() * 4 * 32 >= _MIN_ELEMENTS
    with torch.inference_mode():
        expected = original(input_ids=ids, output_hidden_states=True).hidden_states
        got = loaded(input_ids=ids, output_hidden_states=True).hidden_states
    for layer, (e, g) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=f"hidden state {layer}")


def test_pad_batch_pads_right_and_marks_the_last_token():
    ids, mask, last = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert last.tolist() == [2, 0, 1]
    assert ids.dtype == mask.dtype == last.dtype == torch.long
    with pytest.raises(ValueError, match="at least one token"):
        pad_batch([[1], []], pad_id=0)


def test_next_token_ids_are_the_full_models_greedy_tokens_at_each_last_position():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_positions=32, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    rows = [[int(t) for t in torch.randint(1, 60, (n,))] for n in (3, 9, 1, 14, 6, 11, 2)]
    # an edit at the last positions, as the swap evaluation makes through before_batch
    block, where = model.transformer.h[0], {}

    def edit(_module, _inputs, out):
        hidden = out[0] if isinstance(out, tuple) else out
        edited = hidden.index_put(where["at"], hidden[where["at"]] * -3.0)
        return (edited, *out[1:]) if isinstance(out, tuple) else edited

    block.register_forward_hook(edit)

    def remember(last, _rows):
        where["at"] = (torch.arange(len(last)), last)

    got = next_token_ids(model, rows, pad_id=0, batch_size=3, before_batch=remember)
    expected = []
    with torch.no_grad():
        for row in rows:  # one at a time: no padding, the last position is the row's end
            where["at"] = (torch.tensor([0]), torch.tensor([len(row) - 1]))
            expected.append(int(model(input_ids=torch.tensor([row])).logits[0, -1].argmax()))
    assert got.tolist() == expected
