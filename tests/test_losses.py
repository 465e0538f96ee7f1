"""Each loss against a literal implementation with the explicit correlation matrix."""

import pytest
import torch

from supervised_sae.config import SaeConfig
from supervised_sae.runs import RUN_KINDS
from supervised_sae.sae.losses import (
    RHO_EPS,
    LossSettings,
    indep_from_gram,
    normalized_columns,
    sae_losses,
)
from supervised_sae.sae.model import SupervisedSAE

DEFAULT_WEIGHTS = SaeConfig.default().weights
JOINT = RUN_KINDS["joint"].components


def explicit_rho(z: torch.Tensor) -> torch.Tensor:
    """rho_jk written out: centred covariance over the product of (eps-regularised) norms."""
    c = z - z.mean(0)
    cov = c.t() @ c
    var = torch.diagonal(cov)
    return cov / torch.sqrt((var[:, None] + RHO_EPS) * (var[None, :] + RHO_EPS))


def literal_losses(model, x, relation, answer):
    out = model(x)
    z, x_hat, n_free = out["z"], out["x_hat"], model.n_free
    rho = explicit_rho(z.double())
    free = rho[:n_free, :n_free]
    onehot = torch.nn.functional.one_hot(relation, model.n_relations).double()
    return {
        "recon": ((x - x_hat) ** 2).sum(1).mean(),
        "sparse": z.abs().sum() / (z.shape[0] * z.shape[1]),
        "align": ((z[:, n_free:] - onehot) ** 2).sum(1).mean(),
        "indep": (free**2).sum() - (torch.diagonal(free) ** 2).sum(),
        "ortho": (rho[n_free:, :n_free] ** 2).sum(),
        "value": torch.nn.functional.cross_entropy(out["logits"], answer),
    }


@pytest.mark.parametrize("indep_policy", ["exact", "skip_above_threshold"])
@pytest.mark.parametrize("value_head", ["gated", "slot_only"])
def test_losses_and_gradients_match_literal_formulas(value_head, indep_policy):
    """Both ortho paths (shared Gram with indep on, R x n_free block with it off)."""
    torch.manual_seed(0)
    model = SupervisedSAE(12, 40, 6, 9, value_head=value_head, seed=3).double()
    x = torch.randn(16, 12, dtype=torch.float64)
    relation = torch.randint(0, 6, (16,))
    answer = torch.randint(0, 9, (16,))
    # the seed's literal sums
    settings = LossSettings.from_config(SaeConfig.default(
        indep_policy=indep_policy, indep_threshold=10, decorrelation="raw",
        normalize_per_pair=False))
    total, parts = sae_losses(model(x), x, relation, answer, 40, JOINT,
                              settings)
    expected = literal_losses(model, x, relation, answer)
    if indep_policy != "exact":
        assert "indep" not in parts
        del expected["indep"]
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-9), name
        # gradients of each component agree too
        weights = (model.W_enc_rows, model.W_dec)
        g_ours = torch.autograd.grad(parts[name], weights, retain_graph=True, allow_unused=True)
        g_lit = torch.autograd.grad(value, weights, retain_graph=True, allow_unused=True)
        for a, b in zip(g_ours, g_lit, strict=True):
            if a is None or b is None:  # slot_only's value loss does not reach W_dec
                assert a is None or not a.any()
                assert b is None or not b.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    weighted = sum(DEFAULT_WEIGHTS[k] * v for k, v in expected.items())
    assert total.item() == pytest.approx(weighted.item(), rel=1e-6)


def test_constant_and_dead_columns_have_zero_correlation():
    z = torch.zeros(8, 5)
    z[:, 0] = torch.arange(8.0)
    z[:, 1] = 2.5  # constant but firing
    z[:, 2] = torch.arange(8.0) ** 2
    z_hat = normalized_columns(z)
    assert torch.isfinite(z_hat).all()
    rho = z_hat.t() @ z_hat
    assert rho[1].abs().max() < 1e-3 and rho[3].abs().max() == 0
    gram = z_hat @ z_hat.t()
    assert torch.isfinite(indep_from_gram(z_hat, gram))


def test_gram_identity_is_exact_where_d_by_d_would_not_fit():
    # 300,000 free slots: the explicit correlation matrix would take 360 GB in float32.
    # Columns are 50 random patterns, each repeated 6,000 times, so the exact sum is known
    # from the 50 x 50 matrix: sum_{j!=k} rho^2 = m^2 sum_{a,b} rho_ab^2 - D.
    torch.manual_seed(0)
    batch, patterns, copies = 16, 50, 6_000
    base = torch.relu(torch.randn(batch, patterns, dtype=torch.float64)) + 0.01
    z = base.repeat_interleave(copies, dim=1)
    n_free = patterns * copies
    free = normalized_columns(z)
    indep = indep_from_gram(free, free @ free.t())
    small = explicit_rho(base)
    expected = copies**2 * (small**2).sum() - n_free
    assert indep.item() == pytest.approx(expected.item(), rel=1e-6)
    # Rank bound: the sum is at least D^2/(B-1) - D.
    assert indep.item() >= n_free**2 / (batch - 1) - n_free


def test_indep_policy_follows_the_seed_by_default():
    settings = LossSettings.from_config(SaeConfig.default())
    assert settings.indep_enabled(10_000) and not settings.indep_enabled(100_000)
    model = SupervisedSAE(8, 10_001, 6, 4)
    x = torch.randn(4, 8)
    args = (x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 10_001)
    _, parts = sae_losses(model(x), *args, JOINT, settings)
    assert "indep" not in parts and "ortho" in parts
    _, parts = sae_losses(model(x), *args, JOINT,
                          LossSettings.from_config(SaeConfig.default(
                              indep_policy="exact", decorrelation="raw")))
    assert "indep" in parts
    assert parts["indep"].item() == pytest.approx(parts["indep_per_pair"].item())


def test_gated_value_heads_match_their_definition():
    torch.manual_seed(1)
    model = SupervisedSAE(10, 30, 6, 7, seed=2).double()
    with torch.no_grad():
        model.b_dec.normal_()
        model.head.V_bias.normal_()
    x = torch.randn(5, 10, dtype=torch.float64)
    z = model.encode(x)
    free_part = z[:, :30] @ model.W_dec[:30]  # the free slots' part of the reconstruction
    expected = sum(z[:, 30 + r : 31 + r] * (free_part @ model.head.V[r] + model.head.V_bias[r])
                   for r in range(6))
    torch.testing.assert_close(model(x)["logits"], expected)


def _correlation_parts(z: torch.Tensor, n_free: int, **settings) -> dict[str, torch.Tensor]:
    config = SaeConfig.default(indep_policy="exact", **settings)
    x = torch.zeros(len(z), 1, dtype=z.dtype)
    _, parts = sae_losses({"z": z, "x_hat": x}, x, torch.zeros(len(z), dtype=torch.long),
                          None, n_free, ("indep", "ortho"), LossSettings.from_config(config))
    return parts


def test_excess_is_the_seed_sum_less_chance_with_the_seed_gradient_for_varying_slots():
    torch.manual_seed(1)
    z = torch.relu(torch.randn(16, 30, dtype=torch.float64) + 0.5).requires_grad_()
    n_free, dof = 24, 15
    raw = _correlation_parts(z, n_free, decorrelation="raw", normalize_per_pair=False)
    excess = _correlation_parts(z, n_free, decorrelation="excess", normalize_per_pair=False)
    v = (normalized_columns(z) ** 2).sum(0).detach()  # 1 for a varying column
    free, rel = v[:n_free], v[n_free:]
    chance_indep = (free.sum() ** 2 - (free**2).sum()) / dof
    assert excess["indep"].item() == pytest.approx((raw["indep"] - chance_indep).item())
    chance_ortho = rel.sum() * free.sum() / dof
    assert excess["ortho"].item() == pytest.approx((raw["ortho"] - chance_ortho).item())
    for name in ("indep", "ortho"):  # every column varies: the seed's gradient
        g_raw, = torch.autograd.grad(raw[name], z, retain_graph=True)
        g_excess, = torch.autograd.grad(excess[name], z, retain_graph=True)
        torch.testing.assert_close(g_excess, g_raw, rtol=1e-6, atol=1e-9)
    per_pair = _correlation_parts(z, n_free)  # the defaults: excess, per pair
    assert per_pair["ortho"].item() == pytest.approx(excess["ortho"].item() / (6 * n_free))
    assert per_pair["indep"].item() == pytest.approx(
        excess["indep"].item() / (n_free * (n_free - 1)))


def test_silencing_a_relation_slot_earns_nothing_under_excess():
    """The raw ortho sum pays every varying relation slot ~n_free/(B - 1) even when it is
    independent of the free slots, so a silent slot is cheaper; the excess is ~0 for both."""
    torch.manual_seed(2)
    n_free, batches = 100, 200
    varying = {"raw": [], "excess": []}
    for _ in range(batches):
        z = torch.relu(torch.randn(64, n_free + 1, dtype=torch.float64))
        for kind in varying:
            parts = _correlation_parts(z, n_free, decorrelation=kind,
                                       normalize_per_pair=False)
            varying[kind].append(parts["ortho"].item())
    silent = torch.relu(torch.randn(64, n_free + 1, dtype=torch.float64))
    silent[:, n_free] = 0.0
    for kind, values in varying.items():
        mean = sum(values) / batches
        quiet = _correlation_parts(silent, n_free, decorrelation=kind,
                                   normalize_per_pair=False)["ortho"].item()
        assert quiet == pytest.approx(0.0, abs=1e-6)
        if kind == "raw":  # chance alone: about n_free/(B - 1) = 1.6
            assert mean > 1.2
        else:
            assert abs(mean) < 0.1
