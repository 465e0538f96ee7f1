"""Whole answers: the trie's reading, greedy decoding against teacher forcing on a real
LM, values that share their first token, and the built-in BPE tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_LM_VOCAB, tiny_lm

from supervised_sae.data.biographies import build_dataset
from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit
from supervised_sae.evaluation.entity_swaps import entity_swaps
from supervised_sae.evaluation.interventions import splice_accuracy
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.lm.answers import NO_VALUE, AnswerTrie, answer_token_ids
from supervised_sae.lm.fit import training_texts
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.load import teacher_forced_argmax
from supervised_sae.lm.tokenizer import build_bpe_tokenizer
from supervised_sae.sae.model import SupervisedSAE

NEW, YORK, CITY, TIMES, PARIS = 1, 2, 3, 4, 5


def test_the_trie_reads_the_value_a_greedy_answer_spells_and_no_shorter_one():
    trie = AnswerTrie([(NEW, YORK), (NEW, YORK, CITY), (PARIS,)])
    rows = torch.tensor([[NEW, YORK, 0, -1],        # "New York" then the end
                         [NEW, YORK, CITY, 0],      # the longer value
                         [NEW, YORK, TIMES, 0],     # off the trie after a value
                         [NEW, TIMES, 0, -1],       # off the trie before any value
                         [PARIS, YORK, -1, -1],     # a one-token value stops the walk
                         [TIMES, 0, -1, -1],        # no value starts so
                         [NEW, YORK, -1, -1]])      # generation stopped (no token)
    assert trie.decode(rows).tolist() == [0, 1, 0, NO_VALUE, 2, NO_VALUE, 0]
    value, more = trie.first_step(torch.tensor([PARIS, NEW, TIMES]))
    assert value.tolist() == [2, NO_VALUE, NO_VALUE] and more.tolist() == [False, True, False]
    assert trie.first_token_identifies().tolist() == [False, False, True]
    assert trie.tokens_to_settle == 3  # "New York" needs a third token to know it ended
    assert AnswerTrie([(NEW, YORK), (PARIS,)]).tokens_to_settle == 2
    with pytest.raises(ValueError, match="the same tokens"):
        AnswerTrie([(PARIS,), (PARIS,)])


def prompts_of(n: int, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [g.integers(1, TINY_LM_VOCAB, g.integers(3, 7)).tolist() for _ in range(n)]


def test_greedy_and_teacher_forced_agree_and_a_shared_first_token_is_wrong():
    """Values of four tokens (a date: month, day, comma, year): on even rows the LM's
    own greedy continuation, on odd rows the same month with another day. Generation
    through the prefix-cached runner and one teacher-forced pass agree on every row;
    the odd rows are wrong though their first token is right, by the LM-accuracy check
    and by splicing alike."""
    lm, encoded = tiny_lm(2), prompts_of(16)
    n = len(encoded)
    runner = PrefixCachedRunner(lm, lm.transformer.h, 1, encoded, "cpu", batch_size=3)
    greedy = runner.run(np.arange(n), [Edit(None, new_tokens=4)])[0]
    gold = [tuple(g.tolist()) if i % 2 == 0 else
            (int(g[0]), int(g[1]) % (TINY_LM_VOCAB - 1) + 1, *g[2:].tolist())
            for i, g in enumerate(greedy)]
    values = sorted(set(gold))
    answer = torch.tensor([values.index(v) for v in gold])
    trie = AnswerTrie(values)
    runner.trie = trie
    decoded = decode_answers(runner, np.arange(n), [Edit(None)])[0]
    forced = torch.stack(teacher_forced_argmax(lm, encoded, gold, 0))
    assert forced.shape == (n, 5)  # four answer positions and the one after
    by_forcing = trie.decode(forced)
    assert ((decoded == answer) == (by_forcing == answer)).all()
    assert (decoded == answer).tolist() == [i % 2 == 0 for i in range(n)]
    assert (forced[:, 0] == torch.tensor([g[0] for g in gold])).all()  # months all right

    data = LayerData(x=torch.zeros(n, 8), relation=torch.zeros(n, dtype=torch.long),
                     answer=answer, split=torch.ones(n, dtype=torch.long),
                     heldout=torch.zeros(n, dtype=torch.bool), person=torch.arange(n),
                     answer_token_id=torch.tensor([g[0] for g in gold]),
                     relation_names=["birth_date"], answer_values=[str(v) for v in values],
                     value_tokens=values, layer=1, n_layers=2, fingerprint="by hand")
    sae = SupervisedSAE(lm.config.n_embd, 8, 1, 1, seed=0).eval()
    spliced = splice_accuracy(sae, runner, data, torch.arange(n), 100)
    assert spliced["clean_accuracy"] == 0.5
    # the whole answer's NLL against full passes over prompt + answer, edit by hand
    for key, edit in (("clean", None), ("spliced", lambda h: sae.decode(sae.encode(h))),
                      ("zero_ablated", torch.zeros_like)):
        expected = np.mean([answer_nll(lm, 1, p, g, edit) for p, g in zip(encoded, gold,
                                                                           strict=True)])
        assert spliced[f"{key}_answer_nll"] == pytest.approx(expected, abs=1e-4), key
    assert spliced["clean_answer_nll"] > spliced["clean_ce"]  # four tokens, not one


def answer_nll(lm, layer: int, prompt: list[int], answer: tuple[int, ...], edit) -> float:
    """-log p(answer | prompt) by one full pass, the residual after block `layer` at the
    prompt's last position replaced by edit(h) (None: clean)."""
    last = len(prompt) - 1

    def replace(hidden):
        hidden = hidden.clone()
        hidden[:, last] = edit(hidden[:, last].float())
        return hidden
    handle = None if edit is None else hook_residual(lm.transformer.h, layer, replace)
    try:
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([[*prompt, *answer]])).logits[0]
    finally:
        if handle is not None:
            handle.remove()
    log_p = torch.log_softmax(logits[last:last + len(answer)], -1)
    return -float(log_p[torch.arange(len(answer)), torch.tensor(answer)].sum())


def test_an_entity_swap_to_a_value_sharing_the_first_token_is_not_a_cause():
    """Q's residual patched in (the ceiling) makes the LM answer as on Q's prompt; when
    Q's value is recorded as P's month with another day, the ceiling's cause is 0 even
    though the first token of every answer is Q's."""
    lm = tiny_lm(2)
    encoded = prompts_of(12, seed=1)
    n = len(encoded)
    runner = PrefixCachedRunner(lm, lm.transformer.h, 1, encoded, "cpu")
    greedy = runner.run(np.arange(n), [Edit(None, new_tokens=3)])[0]
    with torch.no_grad():
        x = torch.stack([lm.transformer(torch.tensor([e]), output_hidden_states=True)
                         .hidden_states[2][0, -1] for e in encoded])
    for shift in (0, 1):  # the LM's own values, then each moved by one "day"
        gold = [(int(g[0]), (int(g[1]) + shift - 1) % (TINY_LM_VOCAB - 1) + 1,
                 *g[2:].tolist()) for g in greedy]
        values = sorted(set(gold))
        data = LayerData(x=x, relation=torch.zeros(n, dtype=torch.long),
                         answer=torch.tensor([values.index(v) for v in gold]),
                         split=torch.ones(n, dtype=torch.long),
                         heldout=torch.zeros(n, dtype=torch.bool), person=torch.arange(n),
                         answer_token_id=torch.tensor([g[0] for g in gold]),
                         relation_names=["r"], answer_values=[str(v) for v in values],
                         value_tokens=values, layer=1, n_layers=2, fingerprint="by hand")
        runner.trie = AnswerTrie(values)
        result = entity_swaps(data, runner, np.arange(n), lambda d: (lambda h, j: d[j]),
                              "nothing")
        assert result["ceiling"]["cause"] == (1.0 if shift == 0 else 0.0)


def test_the_bpe_tokenizer_splits_values_and_many_share_their_first_token():
    _, bios, prompts = build_dataset(60, 2, 0.5, 2, seed=0)
    tok = build_bpe_tokenizer(training_texts(bios, prompts), vocab_size=600)
    rows = prompts.drop_duplicates(["person", "relation"])
    ids = answer_token_ids(tok, list(rows["prompt"]), list(rows["answer"]))
    assert tok.unk_token is None and len(tok) <= 600
    for answer, whole in zip(rows["answer"], ids, strict=True):
        assert tok.decode(whole).strip() == answer
    university = [w for w, r in zip(ids, rows["relation"], strict=True) if r == "university"]
    assert np.mean([len(w) > 1 for w in ids]) > 0.8
    firsts = [w[0] for w in university]
    shared = np.mean([firsts.count(f) > 1 for f in firsts])
    assert shared > 0.3, shared  # "University" and "Technical": a first token names none


def test_a_tiny_lm_on_a_bpe_tokenizer_is_wrong_on_the_value_that_shares_its_first_token():
    """A real GPT-2 trained (seconds) on four QA texts under a byte-level BPE, where two
    universities share their first token: asked about Ann, it answers Ann's university
    in full; scored against Bob's ("University" right, the rest wrong) it is wrong by
    the LM's accuracy (teacher forced) and by the runner's greedy reading alike."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from supervised_sae.lm.load import whole_answer_correct
    from supervised_sae.lm.tokenizer import encode

    qa = [("Where did Ann Lee study?", "University of Alba"),
          ("Where did Bob Ray study?", "University of Brill"),
          ("Where was Ann Lee born?", "Paris"), ("Where was Bob Ray born?", "Rome")]
    texts = [f"{q} {a}" for q, a in qa]
    tok = build_bpe_tokenizer(texts * 20, vocab_size=300)
    ids = answer_token_ids(tok, [q for q, _ in qa], [a for _, a in qa])
    assert ids[0][0] == ids[1][0] and ids[0] != ids[1]  # "ĠUniversity" starts both
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32,
                                    n_layer=2, n_head=2))
    batch = [e + [tok.eos_token_id] for e in encode(tok, texts)]
    width = max(map(len, batch))
    x = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
    labels = torch.where(x == tok.pad_token_id, -100, x)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        lm(input_ids=x, labels=labels).loss.backward()
        opt.step()
    lm.eval()
    questions = [q for q, _ in qa]
    right, _ = whole_answer_correct(lm, tok, questions, [a for _, a in qa])
    assert right.all()  # it learnt every answer in full
    swapped = [qa[1][1], qa[0][1], qa[2][1], qa[3][1]]  # the universities exchanged
    whole, first = whole_answer_correct(lm, tok, questions, swapped)
    assert first[:2].all() and not whole[:2].any() and whole[2:].all()
    # the runner's greedy reading (swaps, entity swaps, splicing) says the same
    values = sorted({tuple(v) for v in ids})
    runner = PrefixCachedRunner(lm, lm.transformer.h, 1, encode(tok, questions), "cpu",
                                stop_id=tok.eos_token_id, trie=AnswerTrie(values))
    answered = decode_answers(runner, np.arange(4), [Edit(None)])[0]
    assert [values[a] for a in answered.tolist()] == [tuple(v) for v in ids]
    exchanged = [values.index(tuple(v)) for v in answer_token_ids(tok, questions, swapped)]
    assert (answered == torch.tensor(exchanged)).tolist() == [False, False, True, True]
