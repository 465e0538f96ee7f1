"""LM training steps in length-grouped micro-batches: the same batch, the same gradient."""

import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.lm import length_groups, next_token_loss, pad_batch


def test_length_groups_split_mixed_lengths_and_keep_uniform_ones():
    lengths = [55, 12, 60, 11, 13, 58, 9]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [sorted(g) for g in groups] == [[1, 3, 4, 6], [0, 2, 5]]
    assert length_groups([10, 11, 12, 10, 12]) == [[0, 1, 2, 3, 4]]  # saves < 25%
    assert length_groups([7]) == [[0]]


def _gradients(model: GPT2LMHeadModel) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_micro_batches_give_the_padded_batch_loss_and_gradient():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2,
                                       n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    rng = random.Random(0)
    rows = [[rng.randrange(1, 50) for _ in range(rng.choice([6, 9, 40, 47]))]
            for _ in range(16)]

    ids, mask, _ = pad_batch(rows, pad_id=0)
    labels = ids.masked_fill(mask == 0, -100)
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # HF's loss
    reference.backward()
    expected = _gradients(model)

    groups = length_groups([len(r) for r in rows])
    assert len(groups) == 2
    n_targets = sum(len(r) - 1 for r in rows)
    total = torch.zeros(())
    for group in groups:
        ids, mask, _ = pad_batch([rows[i] for i in group], pad_id=0)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = next_token_loss(logits, ids.masked_fill(mask == 0, -100), n_targets)
        loss.backward()
        total += loss.detach()
    torch.testing.assert_close(total, reference.detach())
    for got, want in zip(_gradients(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
