"""Interventions against plain computations: the prefix-cached runner against full
reruns, the published protocol's edit and rules by hand, where swaps went, entity swaps
on a hand-built SAE."""

import numpy as np
import pytest
import torch
from conftest import TINY_LM_EOS, TINY_LM_VOCAB, TINY_LM_WIDTH, one_token_values, tiny_lm

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import NO_TOKEN, Edit
from supervised_sae.evaluation.entity_swaps import entity_edit, entity_swaps
from supervised_sae.evaluation.interventions import predictions_with_edit, splice_accuracy
from supervised_sae.evaluation.published import exact_match, lenient_match, parse_date
from supervised_sae.evaluation.slots import SlotView, relation_slots
from supervised_sae.evaluation.swaps import (
    SwapPairs,
    decoder_edit,
    latent_edit,
    outcome_rates,
)
from supervised_sae.layers import EMBEDDINGS
from supervised_sae.lm.answers import AnswerTrie
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.sae.model import SupervisedSAE

VOCAB, D, EOS = TINY_LM_VOCAB, TINY_LM_WIDTH, TINY_LM_EOS


def prompts(n: int = 14, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 2, 5, 5, 5, 7, 7, 3, 9, 4, 5, 2, 7, 6][:n]
    return [torch.randint(1, VOCAB, (k,), generator=g).tolist() for k in lengths]


def pairs_for(prompt: np.ndarray, n_rel: int = 6) -> SwapPairs:
    g = torch.Generator().manual_seed(2)
    src = torch.randint(0, n_rel, (len(prompt),), generator=g)
    dst = (src + 1 + torch.randint(0, n_rel - 1, (len(prompt),), generator=g)) % n_rel
    return SwapPairs(prompt=prompt, person=prompt, src=src, dst=dst,
                     target=torch.zeros(len(prompt), dtype=torch.long),
                     own=torch.zeros(len(prompt), dtype=torch.long))


@pytest.mark.parametrize("layer", [EMBEDDINGS, 0, 2])
def test_cached_and_uncached_paths_give_the_same_tokens_for_every_edit(layer):
    lm, encoded = tiny_lm(), prompts()
    sae = SupervisedSAE(D, 24, 6, 5, seed=0).eval()
    view = relation_slots(sae)
    prompt_of = np.array([3, 0, 1, 8, 3, 5, 5, 2, 13, 9, 10, 4, 6, 7, 11, 12, 0, 8])
    pairs = pairs_for(prompt_of)
    scale = torch.full((6,), 3.0)
    fns = [None, lambda h, _j: sae.decode(sae.encode(h)),
           *(decoder_edit(sae, view, pairs, a) for a in (0.5, 2.0, 10.0)),
           *(latent_edit(sae, view, pairs, a * scale) for a in (1.0, 20.0))]
    runner = PrefixCachedRunner(lm, lm.transformer.h, layer, encoded, "cpu", batch_size=3)
    cached = runner.run(prompt_of, [Edit(fn) for fn in fns])
    jobs = [encoded[i] for i in prompt_of]
    for fn, tokens in zip(fns, cached, strict=True):
        plain = predictions_with_edit(lm, lm.transformer.h, layer, jobs, 0, fn, "cpu",
                                      batch_size=4)
        assert tokens.shape == (len(prompt_of), 1)
        assert tokens[:, 0].tolist() == plain.tolist()
    # the strong edits change answers, so the comparison above is not between no-ops
    assert cached[4][:, 0].tolist() != cached[0][:, 0].tolist()


def test_kept_prefixes_run_once_across_calls_and_change_no_token():
    """Splicing, swaps, the published walk and entity swaps call the runner on the
    same prompts: each prompt's prefix runs once per job, and the tokens are those of
    a runner that keeps none."""
    lm, encoded = tiny_lm(), prompts()
    sae = SupervisedSAE(D, 24, 6, 5, seed=0).eval()
    edits = [Edit(None), Edit(lambda h, _j: sae.decode(sae.encode(h))),
             Edit(lambda h, _j: 3 * h)]
    calls = [np.array([3, 0, 1, 8, 3, 5]), np.array([5, 8, 2, 13, 3]), np.array([0, 1, 13])]
    keeping = PrefixCachedRunner(lm, lm.transformer.h, 1, encoded, "cpu", batch_size=3)
    fresh = PrefixCachedRunner(lm, lm.transformer.h, 1, encoded, "cpu", batch_size=3,
                               prefix_cache_mb=0)
    for prompt_of in calls:
        for a, b in zip(keeping.run(prompt_of, edits), fresh.run(prompt_of, edits),
                        strict=True):
            assert a.tolist() == b.tolist()
    with_prefix = {p for call in calls for p in call.tolist() if len(encoded[p]) > 1}
    assert keeping.prefix_passes == len(with_prefix)
    assert fresh.prefix_passes == sum(len({p for p in c.tolist() if len(encoded[p]) > 1})
                                      for c in calls)


def test_a_latent_edit_on_the_code_encoded_once_is_the_literal_edit():
    """Swap edits encode each clean vector once and change two slots of its code; that
    is the published edit written out: encode, zero slot A, set slot B, decode, add the
    reconstruction error back (or not)."""
    sae = SupervisedSAE(D, 24, 6, 5, seed=0).eval()
    with torch.no_grad():
        sae.b_enc.add_(0.3)  # relation slots that fire, so zeroing A changes something
    view = relation_slots(sae)
    pairs = pairs_for(np.arange(10))
    h = torch.randn(10, D)
    jobs = torch.arange(10)
    value = torch.linspace(1, 6, 6)
    slot = torch.tensor(view.slots)
    for add_error in (True, False):
        z = sae.encode(h)
        literal = z.clone()
        literal[jobs, slot[pairs.src]] = 0.0
        literal[jobs, slot[pairs.dst]] = value[pairs.dst]
        expected = sae.decode(literal) + ((h - sae.decode(z)) if add_error else 0)
        edit = latent_edit(sae, view, pairs, value, add_error)
        torch.testing.assert_close(edit(h, jobs), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(edit(h[3:7], jobs[3:7]), expected[3:7], rtol=1e-5,
                                   atol=1e-5)
    # the same pairs steered through another SAE encode again with that SAE
    other = SupervisedSAE(D, 30, 6, 5, seed=1).eval()
    other_view = relation_slots(other)
    z = other.encode(h)
    literal = z.clone()
    literal[jobs, torch.tensor(other_view.slots)[pairs.src]] = 0.0
    literal[jobs, torch.tensor(other_view.slots)[pairs.dst]] = value[pairs.dst]
    torch.testing.assert_close(latent_edit(other, other_view, pairs, value, False)(h, jobs),
                               other.decode(literal), rtol=1e-5, atol=1e-5)


def greedy_by_hand(lm, prompt: list[int], last_embedding: torch.Tensor | None,
                   new_tokens: int, stop: int = EOS) -> list[int]:
    """Full reruns, no cache: the token embedding of the prompt's last position replaced
    by `last_embedding` (position embeddings added by the model), then greedy tokens."""
    wte = lm.transformer.wte
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(new_tokens):
            embeds = wte(torch.tensor([ids]))
            if last_embedding is not None:
                embeds[0, len(prompt) - 1] = last_embedding
            token = int(lm(inputs_embeds=embeds).logits[0, -1].argmax())
            out.append(token)
            if token == stop:
                break
            ids.append(token)
    return out


def test_the_published_edit_writes_the_input_embedding_and_generates_greedily():
    lm, encoded = tiny_lm(), prompts()
    layer = 1
    sae = SupervisedSAE(D, 24, 6, 5, seed=0).eval()
    view = relation_slots(sae)
    prompt_of = np.arange(14)
    pairs = pairs_for(prompt_of)
    value = torch.full((6,), 1.0)
    edit = latent_edit(sae, view, pairs, value, add_error=False)
    runner = PrefixCachedRunner(lm, lm.transformer.h, layer, encoded, "cpu", batch_size=2,
                                stop_id=EOS)
    got, clean = runner.run(prompt_of, [Edit(edit, "input_embedding", 6),
                                        Edit(None, "residual", 6)])
    for j, prompt in enumerate(prompt_of):
        row = encoded[prompt]
        with torch.no_grad():  # the clean vector at the layer, last position, by hand
            hidden = lm.transformer(torch.tensor([row]), output_hidden_states=True)
            h = hidden.hidden_states[layer + 1][0, -1]
            z = sae.encode(h[None])
            z[0, view.slots[int(pairs.src[j])]] = 0.0
            z[0, view.slots[int(pairs.dst[j])]] = 1.0
            written = sae.decode(z)[0]
        expected = greedy_by_hand(lm, row, written, 6)
        assert [t for t in got[j].tolist() if t != NO_TOKEN] == expected
        assert [t for t in clean[j].tolist() if t != NO_TOKEN] == greedy_by_hand(
            lm, row, None, 6)
    assert not torch.equal(got, clean)


def test_generation_stops_each_row_at_its_stop_token():
    lm, encoded = tiny_lm(), prompts()
    prompt_of = np.arange(len(encoded))
    free = PrefixCachedRunner(lm, lm.transformer.h, 0, encoded, "cpu", batch_size=5)
    unstopped = free.run(prompt_of, [Edit(None, new_tokens=6)])[0]
    stop = int(torch.mode(unstopped[:, 1:].flatten()).values)  # a token rows do produce
    runner = PrefixCachedRunner(lm, lm.transformer.h, 0, encoded, "cpu", batch_size=5,
                                stop_id=stop)
    got = runner.run(prompt_of, [Edit(None, new_tokens=6)])[0]
    lengths = set()
    for j, row in enumerate(encoded):
        kept = [t for t in got[j].tolist() if t != NO_TOKEN]
        assert kept == greedy_by_hand(lm, row, None, 6, stop=stop)
        lengths.add(len(kept))
    assert len(lengths) > 1  # rows stopped at different steps


@pytest.mark.parametrize(("generated", "gold", "lenient", "exact"), [
    ("Paris", "paris", True, True),
    ("  paris\nand more", "Paris", True, True),       # first line, stripped, lower-cased
    ("new", "New York City", True, False),            # the generation inside the gold
    ("born in Paris, France", "Paris", True, False),  # the gold inside the generation
    ("", "Paris", False, False),                      # an empty generation is a miss
    ("\nParis", "Paris", True, True),                 # leading blank lines are stripped
    ("March 5 , 1990", "March 5, 1990", True, True),  # as a word tokenizer decodes it
    ("March 5 1990", "March 5, 1990", True, False),   # dates as (day, month, year)
    ("5 march 1990", "March 5, 1990", True, False),
    ("March 5, 1991", "March 5, 1990", False, False),
    ("March", "March 5, 1990", False, False),         # a date's part is not the date
    ("London", "Paris", False, False),
])
def test_the_published_rules(generated, gold, lenient, exact):
    assert lenient_match(generated, gold) is lenient
    assert exact_match(generated, gold) is exact


def test_dates_parse_to_day_month_year():
    assert parse_date("March 5, 1990") == (5, 3, 1990)
    assert parse_date("1990 dec 31") == (31, 12, 1990)
    assert parse_date("Paris") is None


def test_the_outcome_breakdown_classifies_each_swap_and_sums_to_one():
    # relation 1's values: tokens 10, 11, 12; the person's B value 10, A value 20
    pairs = SwapPairs(prompt=np.arange(5), person=np.arange(5),
                      src=torch.zeros(5, dtype=torch.long), dst=torch.ones(5, dtype=torch.long),
                      target=torch.full((5,), 10), own=torch.full((5,), 20))
    values_of = [torch.tensor([20, 21]), torch.tensor([10, 11, 12])]
    pred = torch.tensor([10, 20, 11, 12, 33])
    rates = outcome_rates(pred, pairs, values_of)
    assert rates == pytest.approx({"success": 0.2, "no_effect": 0.2, "other_person": 0.4,
                                   "other": 0.2})
    assert sum(rates.values()) == pytest.approx(1.0)
    # a token that is the person's A value and someone's B value means no effect
    both = outcome_rates(torch.tensor([20]), SwapPairs(
        np.arange(1), np.arange(1), torch.tensor([0]), torch.tensor([1]),
        torch.tensor([10]), torch.tensor([20])), [torch.tensor([20]), torch.tensor([10, 20])])
    assert both["no_effect"] == 1.0


def identity_sae(n_rel: int = 6) -> SupervisedSAE:
    """Free slots read +h and -h (2 D of them), so decode(encode(h)) = h exactly;
    relation slots read nothing and write nothing."""
    sae = SupervisedSAE(D, 2 * D, n_rel, 3, seed=0)
    with torch.no_grad():
        for name in ("b_enc", "b_dec"):
            getattr(sae, name).zero_()
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        eye = torch.eye(D)
        sae.W_enc[:, :D], sae.W_enc[:, D:2 * D] = eye, -eye
        sae.W_dec[:D], sae.W_dec[D:2 * D] = eye, -eye
    return sae.eval()


def test_an_entity_swap_with_a_lossless_free_bank_gives_the_donors_answer():
    """With the last block's output swapped for the donor's (the free bank holds all of
    h), the LM answers what it answers on the donor's prompt: cause 1, as the ceiling."""
    lm = tiny_lm(n_layer=2)
    layer = 1  # the last block: only the final norm and the head read it
    encoded = prompts()
    n = len(encoded)
    with torch.no_grad():
        clean = predictions_with_edit(lm, lm.transformer.h, layer, encoded, 0, None, "cpu")
        x = torch.stack([lm.transformer(torch.tensor([e]), output_hidden_states=True)
                         .hidden_states[layer + 1][0, -1] for e in encoded])
    relation = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])[:n]
    data = LayerData(x=x, relation=relation, split=torch.ones(n, dtype=torch.long),
                     heldout=torch.zeros(n, dtype=torch.bool), person=torch.arange(n),
                     **one_token_values(clean), relation_names=["r0", "r1"],
                     layer=layer, n_layers=2, fingerprint="by hand")
    sae = identity_sae(n_rel=2)
    runner = PrefixCachedRunner(lm, lm.transformer.h, layer, encoded, "cpu", batch_size=4,
                                trie=AnswerTrie(data.value_tokens))
    view = SlotView([2 * D, 2 * D + 1], True)
    result = entity_swaps(data, runner, np.arange(n),
                          lambda donor_x: entity_edit(sae, view, donor_x), "relation slots")
    assert result is not None and result["n_swaps"] > 0
    assert result["cause"] == 1.0 and result["ceiling"]["cause"] == 1.0
    assert result["isolation"] == 1.0
    lo, hi = result["cause_ci95"]
    assert lo == hi == 1.0
    # without the free bank, nothing of the donor arrives: no swap causes its answer
    broken = identity_sae(n_rel=2)
    with torch.no_grad():
        broken.W_dec.zero_()
    none = entity_swaps(data, runner, np.arange(n),
                        lambda donor_x: entity_edit(broken, view, donor_x), "relation slots")
    assert none["cause"] == 0.0


def plain_last_log_probs(lm, layer: int, prompt: list[int], edit) -> torch.Tensor:
    """One prompt's next-token log-probabilities by a full forward pass (no cache), with
    the residual at `layer`'s last position replaced by edit(h) (None: clean)."""
    def replace(hidden):
        hidden = hidden.clone()
        hidden[:, -1] = edit(hidden[:, -1].float())
        return hidden
    handle = None if edit is None else hook_residual(lm.transformer.h, layer, replace)
    try:
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([prompt])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize("layer", [EMBEDDINGS, 1])
def test_core_metrics_equal_their_formulas_on_full_forward_passes(layer):
    """CE on the answer token over the full vocabulary (clean, spliced, zero-ablated),
    loss recovered and the spliced KL, against plain uncached passes by hand."""
    lm, encoded = tiny_lm(), prompts()
    sae = SupervisedSAE(D, 24, 6, 5, seed=0).eval()
    targets = torch.randint(1, VOCAB, (len(encoded),), generator=torch.Generator()
                            .manual_seed(3))
    n = len(encoded)
    data = LayerData(x=torch.zeros(n, D), relation=torch.zeros(n, dtype=torch.long),
                     split=torch.ones(n, dtype=torch.long),
                     heldout=torch.zeros(n, dtype=torch.bool), person=torch.arange(n),
                     **one_token_values(targets), relation_names=["r0"], layer=layer,
                     n_layers=2, fingerprint="by hand")
    runner = PrefixCachedRunner(lm, lm.transformer.h, layer, encoded, "cpu", batch_size=3,
                                trie=AnswerTrie(data.value_tokens))
    got = splice_accuracy(sae, runner, data, torch.arange(n), 100)
    splice = lambda h: sae.decode(sae.encode(h))  # noqa: E731
    ce = {name: [] for name in ("clean", "spliced", "zero")}
    kl, hits = [], []
    for i, prompt in enumerate(encoded):
        clean = plain_last_log_probs(lm, layer, prompt, None)
        spliced = plain_last_log_probs(lm, layer, prompt, splice)
        zero = plain_last_log_probs(lm, layer, prompt, torch.zeros_like)
        for name, lp in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            ce[name].append(-float(lp[targets[i]]))
        kl.append(float((clean.exp() * (clean - spliced)).sum()))
        hits.append(float(spliced.argmax() == targets[i]))
    mean = {name: float(np.mean(v)) for name, v in ce.items()}
    assert got["clean_ce"] == pytest.approx(mean["clean"], abs=1e-5)
    assert got["spliced_ce"] == pytest.approx(mean["spliced"], abs=1e-5)
    assert got["zero_ablated_ce"] == pytest.approx(mean["zero"], abs=1e-5)
    gap = mean["zero"] - mean["clean"]  # an untrained LM may do better zero-ablated
    if gap > 0:
        assert got["loss_recovered"] == pytest.approx((mean["zero"] - mean["spliced"]) / gap,
                                                      abs=1e-4)
    else:  # undefined: null with its reason, never NaN (strict JSON has none)
        assert got["loss_recovered"] is None and "undefined" in got["loss_recovered_note"]
    assert got["spliced_kl"] == pytest.approx(float(np.mean(kl)), abs=1e-5)
    assert got["spliced_accuracy"] == pytest.approx(float(np.mean(hits)))
    # an untrained SAE's splice is far from clean: the numbers compared are not trivial
    assert got["spliced_kl"] > 1e-3 and mean["zero"] != pytest.approx(mean["clean"])
