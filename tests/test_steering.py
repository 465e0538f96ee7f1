"""The baselines that are not SAEs against what they must be by construction: DiffMean on
activations whose relations differ along one known direction, the one-position ceiling
against full reruns of the B question, the linear entity swap's projection."""

import numpy as np
import pytest
import torch
from conftest import TINY_LM_VOCAB, TINY_LM_WIDTH, one_token_values, tiny_lm
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit
from supervised_sae.evaluation.interventions import predictions_with_edit
from supervised_sae.evaluation.steering import (
    ceiling_donors,
    ceiling_edit,
    linear_entity_edit,
    probe_rows,
    relation_means,
    span_basis,
    steering_baselines,
    steering_vectors,
)
from supervised_sae.evaluation.swaps import swap_sides
from supervised_sae.layers import EMBEDDINGS
from supervised_sae.lm.answers import AnswerTrie

VOCAB, D, N_REL = TINY_LM_VOCAB, TINY_LM_WIDTH, 6


def random_prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (int(k),), generator=g).tolist()
            for k in torch.randint(2, 8, (n,), generator=g)]


def labelled(x: torch.Tensor, answers: torch.Tensor, n_people: int, layer: int,
             n_layers: int) -> LayerData:
    """Rows person-major, one per (person, relation); the first half of the people
    train, the rest held out; every wording seen."""
    person = torch.arange(n_people).repeat_interleave(N_REL)
    return LayerData(x=x, relation=torch.arange(N_REL).repeat(n_people),
                     split=(person >= n_people // 2).long(),
                     heldout=torch.zeros(len(x), dtype=torch.bool), person=person,
                     **one_token_values(answers), relation_names=[f"r{i}" for i in range(N_REL)],
                     layer=layer, n_layers=n_layers, fingerprint="by hand")


def test_diffmean_recovers_the_direction_relations_differ_along_and_its_swap_succeeds():
    """h = person_p + o_r u at the embedding output of one-token questions (each token's
    embedding written by hand): the train means differ by (o_B - o_A) u, and at alpha 1
    the edit writes the person's own B vector, so the LM answers what it answers on the
    B question: success 1, like the ceiling. The probe direction finds u too (the only
    direction that tells relations apart), up to what its fit picks up by chance."""
    n_people = 200
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    offsets = torch.tensor([-5.0, -3.0, -1.0, 1.0, 3.0, 5.0])
    persons = torch.randn(n_people, D, generator=g)
    persons -= (persons @ u)[:, None] * u  # people orthogonal to u: only relations move on u
    x = persons.repeat_interleave(N_REL, 0) + offsets.repeat(n_people)[:, None] * u
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(x), n_positions=4, n_embd=D, n_layer=2,
                                    n_head=2)).eval()
    encoded = [[i] for i in range(len(x))]  # question i is the one token i
    with torch.no_grad():
        lm.transformer.wte.weight.copy_(x - lm.transformer.wpe.weight[0])
        answers = predictions_with_edit(lm, lm.transformer.h, EMBEDDINGS, encoded, 0, None,
                                        "cpu")
    data = labelled(x, answers, n_people, EMBEDDINGS, 2)
    train = data.slices()["train_seen"]
    means = relation_means(data, train)
    torch.testing.assert_close(means[4] - means[1], (offsets[4] - offsets[1]) * u)
    sides = swap_sides(data, swap_people=20)
    test = sides.pairs["test"]
    vectors = steering_vectors(means, probe_rows(data, train, 100), test)
    expected = (offsets[test.dst] - offsets[test.src])[:, None] * u
    torch.testing.assert_close(vectors["diffmean"], expected, rtol=1e-4, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(vectors["probe_direction"], expected)
    assert cosine.min() > 0.95

    runner = PrefixCachedRunner(lm, lm.transformer.h, EMBEDDINGS, encoded, "cpu",
                                trie=AnswerTrie(data.value_tokens))
    swap = steering_baselines(data, runner, 20, (0.5, 1.0, 2.0), 100)["swap"]
    diffmean = swap["diffmean"]
    assert diffmean["success_rate"][1] == 1.0 and diffmean["train_success_rate"][1] == 1.0
    assert diffmean["best_alpha"] == 1.0 and diffmean["best_success_rate"] == 1.0
    assert swap["ceiling"]["success_rate"] == 1.0
    # a half step lands between two relations' vectors: the LM answers otherwise there
    assert diffmean["success_rate"][0] < 1.0
    assert diffmean["n_pairs"] == 20 * N_REL * (N_REL - 1)


@pytest.mark.parametrize("layer", [0, 2])
def test_the_ceiling_patch_is_the_b_questions_own_residual(layer):
    """The ceiling writes, at the A prompt's last position, the residual a full forward
    pass of the same person's B question has there; at the last block (nothing after it
    reads other positions) the LM then answers exactly as on the B question, and at
    any layer, patching a question with its own vector changes nothing."""
    n_people, n_layer = 6, 3
    lm = tiny_lm(n_layer)
    encoded = random_prompts(n_people * N_REL)
    with torch.no_grad():
        x = torch.stack([lm.transformer(torch.tensor([e]), output_hidden_states=True)
                         .hidden_states[layer + 1][0, -1] for e in encoded])
        clean = predictions_with_edit(lm, lm.transformer.h, layer, encoded, 0, None, "cpu")
    data = labelled(x, clean, n_people, layer, n_layer)
    runner = PrefixCachedRunner(lm, lm.transformer.h, layer, encoded, "cpu", batch_size=4)
    pairs = swap_sides(data, swap_people=100).pairs["test"]
    donors = ceiling_donors(data, data.slices()["test_seen"], pairs)
    # one question per person and relation here: the donor is the person's B question
    person, relation = data.person.numpy(), data.relation.numpy()
    assert (person[donors] == pairs.person).all()
    assert (relation[donors] == pairs.dst.numpy()).all()
    patched, itself = (t[:, 0] for t in runner.run(pairs.prompt, [
        Edit(ceiling_edit(data, donors)),
        Edit(ceiling_edit(data, pairs.prompt.copy()))]))
    assert itself.tolist() == clean[pairs.prompt].tolist()
    if layer == n_layer - 1:
        assert patched.tolist() == clean[donors].tolist()
        assert patched.tolist() == [data.value_tokens[t][0] for t in pairs.target.tolist()]


def test_the_linear_entity_swap_keeps_ps_probe_logits_and_takes_qs_orthogonal_part():
    g = torch.Generator().manual_seed(3)
    n_people = 30
    x = torch.randn(n_people * N_REL, D, generator=g)
    x += torch.randn(N_REL, D, generator=g).repeat(n_people, 1) * 2  # relations tell apart
    data = labelled(x, torch.zeros(len(x), dtype=torch.long), n_people, 0, 1)
    probe = probe_rows(data, data.slices()["train_seen"], 100)
    basis = span_basis(probe)
    assert basis.shape[1] == N_REL - 1  # softmax rows sum to zero: five dimensions
    torch.testing.assert_close(basis.T @ basis, torch.eye(N_REL - 1), atol=1e-5, rtol=0)
    h_p, h_q = x[:12], x[12:24]
    edited = linear_entity_edit(basis, h_q)(h_p, torch.arange(12))
    torch.testing.assert_close(edited @ probe.T, h_p @ probe.T, atol=1e-4, rtol=1e-4)
    outside = torch.eye(D) - basis @ basis.T
    torch.testing.assert_close(edited @ outside, h_q @ outside, atol=1e-5, rtol=1e-5)
    # the probe reads P's relation from the edited vector, whatever Q was asked
    assert (edited @ probe.T).argmax(1).tolist() == (h_p @ probe.T).argmax(1).tolist()
    assert not np.allclose(edited.numpy(), h_p.numpy())
