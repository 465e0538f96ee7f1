"""LM training steps in length-grouped micro-batches: the same batch, the same gradient."""

import logging
import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.lm.fit import length_groups, next_token_loss
from supervised_sae.lm.load import pad_batch


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


def test_lm_rerun_with_another_learning_rate_trains_afresh(tmp_path, caplog):
    from supervised_sae.data.biographies import build_dataset, load_pools
    from supervised_sae.lm.train import train_lm

    _, bios, prompts = build_dataset(n_people=8, biographies_per_person=1, test_fraction=0.5,
                                     heldout_templates=1, seed=0)
    values = load_pools().attribute_values()
    shape = dict(n_layer=1, n_embd=16, n_head=2, n_positions=128, epochs=1, batch_size=16)

    def train(lr: float, out: str) -> dict[str, torch.Tensor]:
        model = train_lm(bios, prompts, values, tmp_path / out, tmp_path / "ckpt", lr=lr,
                         **shape)
        return {k: v.clone() for k, v in model.state_dict().items()}

    caplog.set_level(logging.INFO)
    first = train(1e-3, "a")
    caplog.clear()
    again = train(1e-3, "b")  # same run: resumes its finished checkpoint
    assert "resumed LM training" in caplog.text
    caplog.clear()
    other = train(3e-3, "c")  # another lr: the old checkpoint is set aside
    assert "other lr" in caplog.text and "resumed" not in caplog.text
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_every_answer_of_a_users_table_is_a_token():
    """Held-out people's answers are in no training text of a user's table: without
    `every_value` they would all read as [UNK] (23 answers, 184 of 768 rows before)."""
    from supervised_sae.lm.tokenizer import UNK, build_word_tokenizer

    answers = ["Oslo", "Lima", "Quito"]
    plain = build_word_tokenizer(["Where was ann born ? Oslo"], answers)
    full = build_word_tokenizer(["Where was ann born ? Oslo"], answers, every_value=True)
    assert plain.convert_ids_to_tokens(plain("Lima")["input_ids"])[-1] == UNK
    assert [full.convert_ids_to_tokens(full(a)["input_ids"])[-1] for a in answers] == answers


def test_the_model_folder_records_whether_held_out_people_were_read(tmp_path):
    """Built-in data: every held-out person's biographies; a user's table alone: none,
    and accuracy.json (through `held_out_facts`) says so."""
    from supervised_sae.data.biographies import build_dataset
    from supervised_sae.jobs import read_biographies
    from supervised_sae.lm.load import held_out_facts
    from supervised_sae.lm.train import train_lm

    _, bios, prompts = build_dataset(n_people=8, biographies_per_person=1, test_fraction=0.5,
                                     heldout_templates=1, seed=0)
    shape = dict(n_layer=1, n_embd=16, n_head=2, n_positions=128, epochs=1, batch_size=16,
                 lr=1e-3)
    values = sorted(set(prompts["answer"]))
    train_lm(bios, prompts, values, tmp_path / "builtin", tmp_path / "c1", **shape)
    train_lm(read_biographies(None), prompts, values, tmp_path / "own", tmp_path / "c2",
             **shape)
    builtin, own = held_out_facts(tmp_path / "builtin"), held_out_facts(tmp_path / "own")
    assert builtin["held_out_facts_read"] is True and "4 of 4 held-out" in builtin["held_out_note"]
    assert own["held_out_facts_read"] is False and "measure nothing" in own["held_out_note"]
    assert held_out_facts(tmp_path)["held_out_facts_read"] is None  # not a model of ours
    from supervised_sae.lm.describe import describe_lm

    built = describe_lm(tmp_path / "builtin")
    assert (built["origin"], built["family"], built["depth"], built["width"]) == \
        ("built here", "gpt2", 1, 16)
