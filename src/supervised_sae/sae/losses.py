"""The six losses of the supervised SAE.

indep and ortho use the Gram identity: with Z_hat the batch-centred, column-normalised
code (B x D), sum_{j,k} rho_jk^2 = ||Z_hat^T Z_hat||_F^2 = ||Z_hat Z_hat^T||_F^2, a B x B
matrix, so both are exact at any width in O(B^2 D) time and O(B D) memory. When indep is
off, ortho is the R x n_free block of correlations itself, O(R B D).

Chance floor (`sae.decorrelation: excess`, the default). Over a batch of B rows, two
independent slots still have E[rho^2] = 1/(B - 1), and a slot that never varies has
rho = 0 with everything. So the raw sums (`raw`, the seed's literal formula) pay every
varying slot about 1/(B - 1) per partner, and silencing a slot is the only way out:
at 2,048 free slots and B = 64, raw ortho (x 0.01) outweighs the align loss and the
relation slots of separate_activation die (slot accuracy 0.33). `excess` subtracts
that chance level, sum over slots of |z_hat_j|^2 times the partners' |z_hat|^2 over
(B - 1). For a slot that varies |z_hat_j|^2 = 1, so its gradient is the seed's; only the
reward for going silent is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from supervised_sae.config import SaeConfig
from supervised_sae.runs import COMPONENTS

RHO_EPS = 1e-8


@dataclass(frozen=True)
class LossSettings:
    """The `sae` config's loss settings (see `SaeConfig` for each field)."""

    weights: dict[str, float]
    indep_policy: str
    indep_threshold: int
    normalize_per_pair: bool
    decorrelation: str = "excess"
    lens_prior: float = 0.0
    sparsity: str = "seed"

    @classmethod
    def from_config(cls, sae: SaeConfig) -> LossSettings:
        return cls(sae.weights, sae.indep_policy, sae.indep_threshold, sae.normalize_per_pair,
                   sae.decorrelation, sae.lens_prior, sae.sparsity)

    def indep_enabled(self, n_free: int) -> bool:
        return self.indep_policy == "exact" or n_free <= self.indep_threshold


def normalized_columns(z: torch.Tensor) -> torch.Tensor:
    """Centre each column over the batch and scale it to unit norm (constant column -> 0).

    rho_jk = <c_j, c_k> / sqrt((|c_j|^2 + eps)(|c_k|^2 + eps)): a column that never
    varies has rho = 0 with everything, never NaN.
    """
    c = z - z.mean(dim=0, keepdim=True)
    return c * torch.rsqrt((c * c).sum(dim=0, keepdim=True) + RHO_EPS)


def indep_from_gram(z_hat_free: torch.Tensor, gram_free: torch.Tensor) -> torch.Tensor:
    """sum_{j != k} rho_jk^2 over free slots = ||G||_F^2 - sum_j |z_hat_j|^4."""
    col_sq = (z_hat_free * z_hat_free).sum(dim=0)
    return (gram_free * gram_free).sum() - (col_sq * col_sq).sum()


def ortho_from_gram(z_hat_rel: torch.Tensor, gram_free: torch.Tensor) -> torch.Tensor:
    """sum_{j in rel, k in free} rho_jk^2 = <G_rel, G_free>_F."""
    gram_rel = z_hat_rel @ z_hat_rel.t()
    return (gram_rel * gram_free).sum()


def sae_losses(
    model_out: dict[str, torch.Tensor],
    x: torch.Tensor,
    relation: torch.Tensor,
    answer: torch.Tensor,
    n_free: int,
    components: tuple[str, ...],
    settings: LossSettings,
    sparse_ramp: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and each unweighted component (only those in `components`).

    Also returns diagnostics of the correlation terms (`indep_per_pair`, `indep_excess`:
    the raw sum minus its rank bound T^2/(B-1) - T, T = number of varying columns),
    because at batch 64 and 10^5 slots the raw sum is dominated by that bound.
    """
    z, x_hat = model_out["z"], model_out["x_hat"]
    parts: dict[str, torch.Tensor] = {}
    if "recon" in components:
        parts["recon"] = ((x - x_hat) ** 2).sum(dim=1).mean()
    if "sparse" in components and settings.sparsity == "per_example":
        # per row, sum_j |z_j| ||W_dec,j|| over free slots; needs the decoder row norms
        parts["sparse"] = (z[:, :n_free] @ model_out["free_decoder_norms"]).mean()
    elif "sparse" in components:
        parts["sparse"] = z.mean()  # = mean |z|: z is a ReLU output (abs costs 3 passes)
    if "align" in components:
        target = F.one_hot(relation, z.shape[1] - n_free).to(z.dtype)
        parts["align"] = ((z[:, n_free:] - target) ** 2).sum(dim=1).mean()
    want_indep = "indep" in components and settings.indep_enabled(n_free)
    if want_indep or "ortho" in components:
        z_hat = normalized_columns(z.to(torch.promote_types(z.dtype, torch.float32)))
        z_free, z_rel = z_hat[:, :n_free], z_hat[:, n_free:]
        n_rel = z_rel.shape[1]
        gram_free = z_free @ z_free.t() if want_indep else None  # B x B
        dof = max(z.shape[0] - 1, 1)
        # |z_hat_j|^2: 1 for a slot that varies over the batch, 0 for one that does not
        varying = (z_free * z_free).sum(dim=0)
        excess = settings.decorrelation == "excess"
        if want_indep:
            raw = indep_from_gram(z_free, gram_free)
            pairs = n_free * (n_free - 1)
            n_varying = varying.sum()
            bound = n_varying * n_varying / dof - n_varying
            parts["indep_per_pair"] = raw.detach() / pairs
            parts["indep_excess"] = (raw - bound).detach()
            if excess:  # chance level: each varying pair 1/(B - 1)
                raw = raw - (n_varying * n_varying - (varying * varying).sum()) / dof
            parts["indep"] = raw / pairs if settings.normalize_per_pair else raw
        if "ortho" in components:
            # share indep's Gram when there is one; else the R x n_free correlation
            # block itself is cheaper (R = 6 relations < B = 64 rows)
            raw = (ortho_from_gram(z_rel, gram_free) if gram_free is not None
                   else (z_rel.t() @ z_free).square().sum())
            if excess:  # chance level: each varying relation-free pair 1/(B - 1)
                raw = raw - (z_rel * z_rel).sum() * varying.sum() / dof
            parts["ortho"] = raw / (n_rel * n_free) if settings.normalize_per_pair else raw
    if "value" in components:
        parts["value"] = F.cross_entropy(model_out["logits"].float(), answer)
    weights = {**settings.weights, "sparse": settings.weights["sparse"] * sparse_ramp}
    total = sum(weights[k] * v for k, v in parts.items() if k in COMPONENTS)
    return total, parts


def auxk_loss(model_out: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the dead slots' decode (`auxk_part`, from the forward)
    reconstructs the main reconstruction's residual; sum of squares over d_model, mean
    over rows (the recon term's units)."""
    residual = (x - model_out["x_hat"]).detach()
    return ((residual - model_out["auxk_part"]) ** 2).sum(dim=1).mean()
