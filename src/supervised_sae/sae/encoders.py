"""SAE encoders: the activation that turns pre-activations x W_enc + b_enc into a code.

Relation slots (the last ones) are never part of a sparsity budget: they are supervised
one-hot and always go through a ReLU. Sparse encoders also return their active free
slots as (row, slot, value) triples, so the decoder reads only those rows of W_dec
(`SupervisedSAE.decode_code`). A new encoder is a class here and one row of
`supervised_sae.registry.ENCODERS`, which holds its facts (settings, budget, loss terms
and their weights, SAELens form, label).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from supervised_sae.sae.losses import auxk_loss


class Code(NamedTuple):
    """z: the whole code [rows, n_free + n_relations]. rows, slots, values: the active
    free slots as flat triples (None: decode z densely)."""

    z: torch.Tensor
    rows: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    values: torch.Tensor | None = None


def _with_relation_slots(z_free: torch.Tensor, pre: torch.Tensor, n_free: int) -> torch.Tensor:
    if pre.shape[1] == n_free:
        return z_free
    return torch.cat([z_free, torch.relu(pre[:, n_free:])], dim=1)


def row_major(values: torch.Tensor, slots: torch.Tensor) -> tuple:
    """[rows, k] values and slots (a per-row top k) as flat (rows, slots, values) triples."""
    rows = torch.arange(len(values), device=values.device).repeat_interleave(values.shape[1])
    return rows, slots.flatten(), values.flatten()


def _triples(z_free: torch.Tensor, max_density: float = 1 / 32) -> tuple:
    """The nonzero entries of a code as flat triples, or Nones where the code is too
    dense for gathering its rows to beat one matmul."""
    mask = z_free > 0
    if float(mask.sum()) > max_density * mask.numel():
        return None, None, None
    rows, slots = mask.nonzero(as_tuple=True)
    return rows, slots, z_free[rows, slots]


class Encoder(nn.Module):
    """An activation over [rows, n_free + n_relations] pre-activations."""

    name: ClassVar[str]
    k: int | None = None
    """Free slots that fire per row by construction (None: no fixed budget)."""

    def code(self, pre: torch.Tensor, n_free: int) -> Code:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What a saved SAE records to rebuild this encoder (`encoder_settings`)."""
        return {}

    def terms(self, model: nn.Module, out: dict[str, Any], x: torch.Tensor
              ) -> dict[str, torch.Tensor]:
        """Its own loss terms on a batch (the names its `registry.ENCODERS` row lists),
        from the SAE's forward output `out` on inputs `x`."""
        return {}

    def free_thresholds(self) -> torch.Tensor:
        """Per free slot, the pre-activation above which it fires at inference, for
        encoders that export as SAELens's `jumprelu`."""
        raise NotImplementedError(f"{self.name} has no inference thresholds")

    @torch.no_grad()
    def after_step(self, pre_free: torch.Tensor, z_free: torch.Tensor) -> None:
        """Bookkeeping after an optimiser step in training (AuxK's dead slots)."""

    @torch.no_grad()
    def calibrate(self, pre_free_rows) -> None:
        """Fit what inference needs on train rows (an iterable of pre-activation chunks)."""


class ReLUEncoder(Encoder):
    """z = ReLU(pre): the seed's encoder."""

    name = "relu"

    def __init__(self, **_unused: Any):
        super().__init__()

    def code(self, pre, n_free):
        return Code(torch.relu(pre))


class BudgetEncoder(Encoder):
    """An encoder with k free slots per row, and the bookkeeping AuxK needs: training
    rows since each free slot last fired (`dead_slots`)."""

    def __init__(self, n_free: int, k: int):
        super().__init__()
        self.k = int(k)
        self.register_buffer("rows_since_fired", torch.zeros(n_free, dtype=torch.long))

    def check_budget(self, n_free: int) -> None:
        if not 0 < self.k <= n_free:
            raise ValueError(f"{self.name} k={self.k}: expected 1..n_free ({n_free})")

    @torch.no_grad()
    def after_step(self, pre_free, z_free):
        self.rows_since_fired.add_(len(z_free)).masked_fill_((z_free > 0).any(0), 0)

    def dead_slots(self, dead_rows: int) -> torch.Tensor:
        """Free slots that fired on none of the last `dead_rows` training rows."""
        return self.rows_since_fired >= dead_rows

    def terms(self, model, out, x):
        return {"auxk": auxk_loss(out, x)}


class TopKEncoder(BudgetEncoder):
    """ReLU(TopK(pre)) over the free slots (Gao et al. 2024): at most k free slots fire
    per row (a selected slot whose pre-activation is <= 0 stays at 0); relation slots
    are outside the budget (ReLU)."""

    name = "topk"

    def __init__(self, n_free: int, k: int, **_unused: Any):
        super().__init__(n_free, k)

    def code(self, pre, n_free):
        self.check_budget(n_free)
        free = pre[:, :n_free]
        values, slots = free.topk(self.k, dim=1)
        values = torch.relu(values)
        z_free = torch.zeros_like(free).scatter(1, slots, values)
        return Code(_with_relation_slots(z_free, pre, n_free), *row_major(values, slots))

    def settings(self):
        return {"k": self.k}


class BatchTopKEncoder(BudgetEncoder):
    """BatchTopK (Bussmann et al. 2024): while training, the k x rows largest free
    pre-activations of the batch fire (rows share one budget); at inference, a free slot
    fires above one learned threshold, set on train rows so the mean L0 is k."""

    name = "batchtopk"

    def __init__(self, n_free: int, k: int, **_unused: Any):
        super().__init__(n_free, k)
        # set by `calibrate` on train rows before every evaluation and at the end
        self.register_buffer("threshold", torch.zeros(()))

    def code(self, pre, n_free):
        self.check_budget(n_free)
        free = torch.relu(pre[:, :n_free])
        if not self.training:
            z_free = free * (free > self.threshold)
            return Code(_with_relation_slots(z_free, pre, n_free), *_triples(z_free))
        values, flat = free.flatten().topk(self.k * len(pre))
        rows, slots = flat // n_free, flat % n_free
        z_free = torch.zeros_like(free).index_put((rows, slots), values)
        return Code(_with_relation_slots(z_free, pre, n_free), rows, slots, values)

    @torch.no_grad()
    def calibrate(self, pre_free_rows):
        """The threshold at which exactly k x rows free slots fire over all train rows:
        the (k x rows)-th largest pre-activation, found chunk by chunk."""
        top, n_rows = None, 0
        for pre_free in pre_free_rows:
            n_rows += len(pre_free)
            merged = torch.relu(pre_free).flatten()
            if top is not None:
                merged = torch.cat([top, merged])
            top = merged.topk(min(self.k * n_rows, merged.numel())).values
        if top is not None and len(top):
            self.threshold.fill_(float(top[-1]))

    def free_thresholds(self):
        return self.threshold.detach().expand(len(self.rows_since_fired))

    def settings(self):
        return {"k": self.k}


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - t); d/dt through a rectangle kernel of width `bandwidth`
    (Rajamanoharan et al. 2024); d/dpre is the plain mask."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        grad_t = -(threshold / ctx.bandwidth) * near * grad
        return grad * (pre > threshold), grad_t.sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - t), with d/dt = -K((pre - t) / bandwidth) / bandwidth and d/dpre its
    negation (H depends on pre only through pre - t), so the L0 penalty moves the
    encoder's pre-activations too, not only the thresholds (SAELens's ste_to_input)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        ste = near * grad / ctx.bandwidth
        return ste, -ste.sum(0), None


class JumpReLUEncoder(Encoder):
    """JumpReLU (Rajamanoharan et al. 2024): a free slot fires above its own learned
    threshold. Its penalty is the batch's mean L0 through a straight-through estimator,
    or, with a `target_l0`, the squared relative distance of the mean L0 from it."""

    name = "jumprelu"

    def __init__(self, n_free: int, threshold: float, bandwidth: float,
                 target_l0: float | None = None, **_unused: Any):
        """threshold, bandwidth: `sae.jumprelu_*` (their defaults live in the spec)."""
        super().__init__()
        self.bandwidth, self.init_threshold = float(bandwidth), float(threshold)
        self.target_l0 = None if target_l0 is None else float(target_l0)
        self.log_threshold = nn.Parameter(torch.full((n_free,), math.log(threshold)))

    def code(self, pre, n_free):
        threshold = self.log_threshold.exp()
        z_free = _JumpReLU.apply(pre[:, :n_free], threshold, self.bandwidth)
        return Code(_with_relation_slots(z_free, pre, n_free), *_triples(z_free))

    def terms(self, model, out, x):
        """l0: the batch's mean L0, or with a target its squared relative distance."""
        l0 = _Step.apply(out["pre_free"], self.log_threshold.exp(),
                         self.bandwidth).sum(1).mean()
        return {"l0": l0 if self.target_l0 is None else (l0 / self.target_l0 - 1) ** 2}

    def free_thresholds(self):
        return self.log_threshold.detach().exp()

    def settings(self):
        return {"threshold": self.init_threshold, "bandwidth": self.bandwidth,
                "target_l0": self.target_l0}


class MatryoshkaEncoder(BatchTopKEncoder):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK over the free bank, trained
    so that nested prefixes of the bank (its first n_free / 2^l slots, l = levels..1)
    each reconstruct the input with the slots after them left out, besides the whole
    bank: early slots learn general features, later ones refine them instead of
    absorbing them. Relation slots are in every prefix (outside the nesting, like
    b_dec). At inference it is BatchTopK: one threshold, calibrated on train rows."""

    name = "matryoshka"

    def __init__(self, n_free: int, k: int, levels: int, **_unused: Any):
        super().__init__(n_free, k)
        self.levels = int(levels)

    def prefix_widths(self, n_free: int) -> list[int]:
        """The nested prefixes' widths, smallest first (the whole bank is not one)."""
        return sorted({max(1, n_free >> level) for level in range(1, self.levels + 1)})

    def terms(self, model, out, x):
        """auxk, and matryoshka: the sum over the prefixes of their reconstruction loss
        (the recon term's units): the residual plus the decode of the slots past them."""
        code, n_free = out["code"], model.n_free
        rows, slots, values = code.rows, code.slots, code.values
        if rows is None:  # a dense code (inference threshold): its nonzero entries
            rows, slots = out["z"][:, :n_free].nonzero(as_tuple=True)
            values = out["z"][rows, slots]
        widths = torch.tensor(self.prefix_widths(n_free), device=x.device)
        band = torch.bucketize(slots, widths, right=True)  # how many prefixes leave it out
        parts = x.new_zeros(len(widths) + 1, len(x), x.shape[1])
        parts = parts.index_put((band, rows), values[:, None] * model.W_dec[slots],
                                accumulate=True)
        # beyond[j]: the decode of the slots outside prefix j (bands j + 1 and up)
        beyond = parts.flip(0).cumsum(0).flip(0)[1:]
        residual = x - out["x_hat"]
        nested = ((residual + beyond) ** 2).sum(dim=2).mean(dim=1).sum()
        return {**super().terms(model, out, x), "matryoshka": nested}

    def settings(self):
        return {"k": self.k, "levels": self.levels}
