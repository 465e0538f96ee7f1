"""Metrics against direct computations on hand-built SAEs and data."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.interventions import predictions_with_edit
from supervised_sae.evaluation.probes import layer_probes
from supervised_sae.evaluation.slots import (
    SlotView,
    binding_accuracy,
    correlation_summary,
    majority_answers,
    match_free_slots,
    relation_slots,
    sae_slice_metrics,
    slot_assignment,
)
from supervised_sae.evaluation.summary import build_summary, metrics_rows, over_replicates
from supervised_sae.layers import EMBEDDINGS
from supervised_sae.sae.model import SupervisedSAE, decided_slot

NAMES = ["r0", "r1", "r2", "r3", "r4", "r5"]


def hand_built(swap_last_two: bool = True):
    """x = e_r (relation r) in 6 dims; relation slot s reads e_s, except that slots 4
    and 5 read each other's direction. Free slots: 4 slots reading e_0..e_3."""
    n = 60
    relation = torch.arange(n) % 6
    x = torch.nn.functional.one_hot(relation, 6).float()
    sae = SupervisedSAE(6, 4, 6, 3, seed=0)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.zero_()
        sae.W_dec.zero_()
        sae.b_dec.zero_()
        for j in range(4):
            sae.W_enc[j, j] = 1.0  # free slot j fires on relation j
            sae.W_dec[j, j] = 1.0  # and writes it back
        for s in range(6):
            reads = {4: 5, 5: 4}.get(s, s) if swap_last_two else s
            sae.W_enc[reads, 4 + s] = 1.0
    data = LayerData(x=x, relation=relation, answer=relation % 3,
                     split=torch.zeros(n, dtype=torch.long),
                     heldout=torch.zeros(n, dtype=torch.bool), person=torch.arange(n),
                     answer_token_id=relation % 3 + 100, relation_names=NAMES,
                     answer_values=["a", "b", "c"], value_tokens=[(100,), (101,), (102,)],
                     layer=0, n_layers=1,
                     fingerprint="hand-built")
    return sae, data


def test_hand_built_sae_metrics_are_exactly_known():
    sae, data = hand_built()
    rows = torch.arange(len(data.x))
    majority = majority_answers(data, rows, 6)
    m = sae_slice_metrics(sae, data, rows, relation_slots(sae), False, majority, NAMES)
    assert m["slot_accuracy"] == pytest.approx(4 / 6)
    assert m["slot_accuracy_per_relation"] == {"r0": 1, "r1": 1, "r2": 1, "r3": 1, "r4": 0,
                                               "r5": 0}
    assert m["binding_accuracy"] == 1.0  # a permutation of slots binds perfectly
    assert m["exact_slot_match"] == pytest.approx(4 / 6)
    mean_act = np.array(m["relation_slot_mean_activation"])
    assert mean_act[4, 5] == 1 and mean_act[5, 4] == 1 and mean_act[4, 4] == 0
    # reconstruction: relations 0-3 come back exactly, 4 and 5 are lost entirely
    assert m["reconstruction_mse"] == pytest.approx((2 / 6) * 1 / 6)
    x = data.x
    fvu = (2 / 6 * len(x)) / ((x - x.mean(0)) ** 2).sum().item()
    assert m["fvu"] == pytest.approx(fvu)
    assert m["l0_free"] == pytest.approx(4 / 6)
    assert m["dead_free_fraction"] == 0
    assert m["dense_free_fraction"] == 1  # each free slot fires on 1 of 6 rows (> 10%)
    # answers are relation % 3, so the majority answer per relation is always right
    assert m["majority_answer_accuracy"] == 1.0


def test_binding_accuracy_is_permutation_invariant():
    confusion = np.array([[0, 9, 1], [10, 0, 0], [0, 0, 10]])
    assert slot_assignment(confusion) == [1, 0, 2]
    assert binding_accuracy(confusion, slot_assignment(confusion), 30) == pytest.approx(29 / 30)
    swapped = confusion[:, [1, 0, 2]]
    assert binding_accuracy(swapped, slot_assignment(swapped), 30) == pytest.approx(29 / 30)


def test_a_tie_or_silent_row_is_wrong_even_for_the_first_relation():
    z = torch.tensor([[0.7, 0.7, 0.1],   # tie for the top
                      [0.0, 0.0, 0.0],   # nothing fires
                      [0.9, 0.2, 0.0],   # decided: slot 0
                      [0.1, 0.3, 0.2]])  # decided: slot 1
    assert decided_slot(z).tolist() == [-1, -1, 0, 1]
    sae, data = hand_built(swap_last_two=False)
    with torch.no_grad():
        sae.W_enc[:, sae.n_free :] = 0.0  # every relation slot silent on every row
    rows = torch.arange(len(data.x))
    m = sae_slice_metrics(sae, data, rows, relation_slots(sae), False,
                          majority_answers(data, rows, 6), NAMES)
    # argmax would call every row relation 0 and score 1/6 of them right
    assert m["slot_accuracy"] == 0 and m["binding_accuracy"] == 0


def test_binding_assignment_comes_from_training_rows_not_the_scored_slice():
    sae, data = hand_built(swap_last_two=True)  # slots 4 and 5 read each other's relation
    rows = torch.arange(len(data.x))
    majority = majority_answers(data, rows, 6)
    identity = list(range(6))  # as if fitted on training rows that bound straight
    fixed = sae_slice_metrics(sae, data, rows, relation_slots(sae), False, majority, NAMES,
                              assignment=identity)
    assert fixed["binding_accuracy"] == pytest.approx(4 / 6)  # the swap is not forgiven
    assert fixed["binding_accuracy_refit"] == 1.0  # refitted on this slice, it would be


@pytest.mark.parametrize("rows", [50, 7])  # the slots x slots and the rows x rows Gram
def test_correlation_summary_matches_explicit_rho(rows):
    torch.manual_seed(0)
    z = torch.relu(torch.randn(rows, 12)) + 0.01 * (torch.arange(rows)[:, None] % 2)
    z[:, 3] = 0  # a dead free slot: left out of the means, counted as dead
    got = correlation_summary(z[:, :9], z[:, 9:])
    alive = [k for k in range(12) if k != 3]
    c = (z[:, alive] - z[:, alive].mean(0)).double()
    norms = torch.sqrt((c * c).sum(0) + 1e-8)
    rho = (c.t() @ c) / (norms[:, None] * norms[None, :])
    free = rho[:8, :8]
    among = ((free**2).sum() - (torch.diagonal(free) ** 2).sum()) / (8 * 7)
    across = (rho[8:, :8] ** 2).sum() / (3 * 8)
    assert got["mean_rho2_free_free"] == pytest.approx(among.item())
    assert got["mean_rho2_relation_free"] == pytest.approx(across.item())
    assert got["rho_dead_free_fraction"] == pytest.approx(1 / 9)


def test_unsupervised_matching_finds_the_planted_slots():
    sae, data = hand_built(swap_last_two=False)
    # an SAE without relation slots whose free slots 7..12 are the planted relation slots
    free_sae = SupervisedSAE(6, 13, 0, 1)
    with torch.no_grad():
        free_sae.W_enc.zero_()
        free_sae.b_enc.zero_()
        free_sae.W_enc[:, 7:13] = torch.eye(6)[:, [2, 0, 1, 5, 3, 4]]
    view = match_free_slots(free_sae, data, torch.arange(len(data.x)), 6)
    assert view == SlotView([8, 9, 7, 11, 12, 10], False)


def test_splice_with_identity_edit_equals_clean_and_a_big_edit_changes_it():
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2,
                                    n_head=2)).eval()
    encoded = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    clean = predictions_with_edit(lm, lm.transformer.h, 0, encoded, 0, None, "cpu")
    same = predictions_with_edit(lm, lm.transformer.h, 0, encoded, 0, lambda h, r: h, "cpu")
    assert torch.equal(clean, same)
    # pad tokens at the end must not matter: each row alone gives the same answer
    alone = torch.cat([predictions_with_edit(lm, lm.transformer.h, 0, [e], 0, None, "cpu")
                       for e in encoded])
    assert torch.equal(clean, alone)
    push = torch.randn(16) * 1e3
    moved = predictions_with_edit(lm, lm.transformer.h, 1, encoded, 0,
                                  lambda h, r: h + push, "cpu")
    assert len(set(moved.tolist())) == 1  # a huge push decides the answer alone
    # the embedding output (-1) is edited before block 0: identity keeps it, and a
    # different input there gives what the LM gives for that input
    at_emb = predictions_with_edit(lm, lm.transformer.h, EMBEDDINGS, encoded, 0,
                                   lambda h, r: h, "cpu")
    assert torch.equal(clean, at_emb)
    other = lm.transformer.wte.weight[9] + lm.transformer.wpe.weight[2]  # token 9 at 3rd
    swapped = predictions_with_edit(lm, lm.transformer.h, EMBEDDINGS, [[1, 2, 3]], 0,
                                    lambda h, r: other.expand_as(h), "cpu")
    assert torch.equal(swapped, predictions_with_edit(lm, lm.transformer.h, 0, [[1, 2, 9]],
                                                      0, None, "cpu"))


def test_probes_separate_linearly_separable_data():
    sae, data = hand_built()
    data.split = (torch.arange(len(data.x)) // 6) % 2  # every relation on both sides
    result = layer_probes(data, steps=50)
    assert result["relation"]["test_seen"] == 1.0


def test_summary_has_one_row_per_number(tmp_path):
    import json

    metrics = {"layer": 2, "mode": "joint", "relation_names": NAMES,
               "slices": {"test_seen": {"slot_accuracy": 0.5, "confusion": [[1, 2], [3, 4]],
                                        "per_relation": {"r0": 1.0}}},
               "spliced": {"test_seen": {"clean_accuracy": 0.9, "spliced_accuracy": 0.8}},
               "swap": {"alphas": [1, 2], "n_people": {"train": 5, "test": 4},
                        "decoder": {"success_rate": [0.1, 0.2],
                                    "train_success_rate": [0.3, 0.1], "best_alpha": 1,
                                    "best_success_rate": 0.1, "best_success_ci95": [0, 0.4],
                                    "n_pairs": 10, "matrix_at_best_alpha": [[0, 1], [1, 0]],
                                    "counts_at_best_alpha": [[0, 5], [5, 0]]}}}
    rows = metrics_rows(metrics, "joint")
    # 1 + 4 + 1 slice numbers, 2 spliced; swap: 2 + 2 rates per alpha, best alpha, best
    # rate, 2 interval ends, n_pairs, 4 matrix cells, 4 counts, 2 people counts
    assert len(rows) == 6 + 2 + 4 + 1 + 1 + 2 + 1 + 4 + 4 + 2
    paths = [tmp_path / "joint/layer2/metrics.json", tmp_path / "joint/layer2_seed1/metrics.json"]
    for k, path in enumerate(paths):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**metrics, "slices": {"test_seen": {
            **metrics["slices"]["test_seen"], "slot_accuracy": 0.5 + 0.2 * k}}}))
    table = build_summary(paths, [], None)
    assert not table.duplicated(["mode", "layer", "replicate", "slice", "metric"]).any()
    assert list(table.columns) == ["draw", "sweep", "reproduction", "mode", "layer",
                                   "replicate", "slice", "metric", "value"]
    assert not table["reproduction"].any()  # the main study's runs
    assert table["sweep"].isna().all()  # the main study's runs
    assert sorted(table["replicate"].unique()) == [0, 1] and set(table["draw"]) == {0}
    stats = over_replicates(table).set_index(["mode", "layer", "slice", "metric"])
    slot = stats.loc[("joint", 2, "test_seen", "slot_accuracy")]
    assert slot["mean"] == pytest.approx(0.6) and slot["n"] == 2 and slot["over"] == "seeds"
    assert slot["sd"] == pytest.approx(0.2 / 2**0.5)  # sample sd of 0.5 and 0.7


def test_a_metric_added_in_evaluation_reaches_the_summary_unnamed():
    """The summary names no metric: a new intervention's numbers, a new per-run list
    and a new per-slice number each become rows, the curves one row per alpha."""
    metrics = {"layer": 0, "mode": "joint", "relation_slots": [5, 6],
               "slices": {"test_seen": {"new_slice_metric": 0.25}},
               "swap": {"latent_alphas": [1, 3], "latent_slot_scale": [2.0, 4.0],
                        "some_new_edit": {"alphas": [1, 3], "success_rate": [0.1, 0.4],
                                          "train_success_rate": [0.2, 0.3],
                                          "best_success_ci95": [0.3, 0.5]},
                        "published_protocol": {"success_rate": 0.8, "n_pairs": 4,
                                               "walk": [{"step": "published",
                                                         "success_rate": 0.8, "alpha": 2,
                                                         "success_rate_by_alpha": [0.8]}]}}}
    rows = {(r["slice"], r["metric"]): r["value"] for r in metrics_rows(metrics, "joint")}
    assert rows == {
        ("run", "relation_slots[0]"): 5, ("run", "relation_slots[1]"): 6,
        ("test_seen", "new_slice_metric"): 0.25,
        ("swap", "latent_slot_scale[0]"): 2.0, ("swap", "latent_slot_scale[1]"): 4.0,
        ("swap", "some_new_edit.success_rate@alpha=1"): 0.1,
        ("swap", "some_new_edit.success_rate@alpha=3"): 0.4,
        ("swap", "some_new_edit.train_success_rate@alpha=1"): 0.2,
        ("swap", "some_new_edit.train_success_rate@alpha=3"): 0.3,
        ("swap", "some_new_edit.best_success_ci95[0]"): 0.3,
        ("swap", "some_new_edit.best_success_ci95[1]"): 0.5,
        ("swap", "published.success_rate"): 0.8, ("swap", "published.n_pairs"): 4,
        ("swap", "published.walk.0.published"): 0.8,
        ("swap", "published.walk.0.published.alpha"): 2}


def test_with_several_draws_the_spread_is_over_draw_means(tmp_path):
    """Draw d's runs live in results/draw{d}/: each draw counts once (the mean over its
    SAE seeds), and the sd is over draws; the seeds' own sd is kept beside it."""
    import json

    values = {0: (0.5, 0.7), 1: (0.9, 0.9), 2: (0.2, 0.4)}  # draw -> its two seeds
    paths = []
    for draw, seeds in values.items():
        root = tmp_path / "results" / (f"draw{draw}" if draw else "")
        for r, v in enumerate(seeds):
            path = root / f"joint/layer2{'_seed1' if r else ''}/metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"layer": 2, "slices": {"test_seen": {"fvu": v}}}))
            paths.append(path)
        lm = root / "lm/accuracy.json"
        lm.parent.mkdir(parents=True)
        lm.write_text(json.dumps({"test_seen_templates": {"accuracy": 0.9 + draw / 100}}))
    lm_files = [tmp_path / "results" / p / "lm/accuracy.json" for p in ("", "draw1", "draw2")]
    table = build_summary(paths, [], lm_files)
    assert sorted(table["draw"].unique()) == [0, 1, 2]
    stats = over_replicates(table).set_index(["mode", "layer", "slice", "metric"])
    fvu = stats.loc[("joint", 2, "test_seen", "fvu")]
    draw_means = [0.6, 0.9, 0.3]
    assert fvu["over"] == "draws" and fvu["n"] == 3 and fvu["n_seeds"] == 2
    assert fvu["mean"] == pytest.approx(np.mean(draw_means))
    assert fvu["sd"] == pytest.approx(np.std(draw_means, ddof=1))
    assert fvu["sd_seeds"] == pytest.approx(np.mean([0.2 / 2**0.5, 0, 0.2 / 2**0.5]))
    lm_stat = stats.loc[("lm", 2, "test_seen", "answer_accuracy")]
    assert lm_stat["mean"] == pytest.approx(0.91) and lm_stat["n"] == 3


def test_swap_prompts_cover_every_available_person_once_per_relation(tmp_path):
    from conftest import write_structured_activations

    from supervised_sae.data.store_reader import load_layer
    from supervised_sae.evaluation.swaps import swap_rows

    data = load_layer(write_structured_activations(tmp_path / "a.h5", n_people=24), 0)
    test = data.slices()["test_seen"]
    rows = swap_rows(data, test, n_people=100)  # more asked for than there are: all 12
    people = data.person[rows].tolist()
    assert set(people) == set(data.person[test].tolist()) and len(set(people)) == 12
    pairs = list(zip(people, data.relation[rows].tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) == 12 * 6  # one prompt per person and relation
    few = swap_rows(data, test, n_people=5)
    assert len(set(data.person[few].tolist())) == 5


def test_swap_alpha_is_chosen_on_train_people_and_reported_on_held_out_ones():
    from supervised_sae.evaluation.stats import wilson_interval
    from supervised_sae.evaluation.swaps import SwapPairs, swap_summary

    # 10 pairs A=0 -> B=1; the person's B value is token 7, A value token 3
    pairs = SwapPairs(prompt=np.arange(10), person=np.arange(10),
                      src=torch.zeros(10, dtype=torch.long), dst=torch.ones(10, dtype=torch.long),
                      target=torch.full((10,), 7), own=torch.full((10,), 3))

    def side(rates):  # per alpha: the first 10 * rate pairs answer 7, the rest 3
        return [torch.where(torch.arange(10) < 10 * r, 7, 3) for r in rates], pairs

    values_of = [torch.tensor([3]), torch.tensor([7])]
    # train people favour alpha 1; held-out people would favour alpha 5
    summary = swap_summary(side([0.8, 0.2]), side([0.3, 0.9]), [1, 5], 2, values_of)
    assert summary["best_alpha"] == 1
    assert summary["best_success_rate"] == pytest.approx(0.3)
    assert summary["best_success_ci95"] == pytest.approx(wilson_interval(3, 10))
    assert summary["counts_at_best_alpha"] == [[0, 10], [0, 0]]
    assert summary["outcomes_at_best_alpha"] == pytest.approx(
        {"success": 0.3, "no_effect": 0.7, "other_person": 0.0, "other": 0.0})
    lo, hi = wilson_interval(3, 10)
    assert 0.1 < lo < 0.3 < hi < 0.61


def test_swap_matrix_layer_is_chosen_on_train_people():
    from supervised_sae.report.swap_plots import swap_matrix_layer

    def layer(train, held_out):
        return {"swap": {"decoder": {"train_success_rate": train,
                                     "best_success_rate": held_out}}}

    # held-out people would pick layer 2; train people pick layer 0
    assert swap_matrix_layer({0: layer([0.1, 0.7], 0.2), 2: layer([0.4, 0.5], 0.9)}) == 0


def test_a_one_token_read_out_is_scored_only_where_its_token_names_one_value():
    """Values 0 and 1 share their first token (a lens reads both with one row of W_U),
    value 2 does not: the logit lens of the reconstruction is scored on value-2 rows only
    (relations 2 and 5: the first reconstructed, the second lost), the share beside it."""
    from supervised_sae.lm.readout import Readout

    sae, data = hand_built()
    data.value_tokens = [(100,), (100, 7), (102,)]
    shared = torch.eye(6)[0] + torch.eye(6)[3]
    unembed = torch.stack([shared, shared, torch.eye(6)[2] + torch.eye(6)[5]])
    readout = Readout("layer", 1e-5, torch.ones(6), torch.zeros(6), unembed, torch.zeros(3))
    rows = torch.arange(len(data.x))
    m = sae_slice_metrics(sae, data, rows, relation_slots(sae), False,
                          majority_answers(data, rows, 6), NAMES, readout=readout)
    assert m["first_token_names_value_share"] == pytest.approx(1 / 3)
    assert m["logit_lens_reconstruction_accuracy"] == pytest.approx(0.5)
