"""Value heads: answer logits from the relation slots and the free slots' reconstruction.

Each head is a module with one interface: `logits(z_rel, free_part)` ([rows, relations]
slot activations, and the free slots' part of the reconstruction without b_dec, or
None for heads that read scalars only), `options()` (what a saved SAE records to
rebuild it) and `penalty(sae)` (a term on its parameters, or None). Register a new head
in `supervised_sae.registry.VALUE_HEADS`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from supervised_sae.lm.readout import READOUT_NORMS, Readout, readout_logits


class ValueHead(nn.Module):
    name: ClassVar[str]
    reads_free_part: ClassVar[bool] = True
    needs_readout: ClassVar[bool] = False
    """Reads out through the LM's final norm and unembedding (`attach_readout`)."""

    def logits(self, z_rel: torch.Tensor, free_part: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}

    def penalty(self, b_dec: torch.Tensor) -> torch.Tensor | None:
        return None

    def rescale_free_part(self, factor: float) -> None:
        """Read a free part `factor` x as large to the same logits (`rescale_input`)."""


class GatedHead(ValueHead):
    """s = sum_r z_rel[r] * V_r(x_hat_free): the relation slot that fires gates a linear
    read-out of the entity's features."""

    name = "gated"

    def __init__(self, d_model: int, n_relations: int, n_answers: int,
                 generator: torch.Generator, **_options: Any):
        super().__init__()
        bound = 1 / math.sqrt(d_model)
        self.V = nn.Parameter(
            (torch.rand(n_relations, d_model, n_answers, generator=generator) * 2 - 1) * bound)
        self.V_bias = nn.Parameter(torch.zeros(n_relations, n_answers))

    @torch.no_grad()
    def rescale_free_part(self, factor):
        self.V.div_(factor)

    def logits(self, z_rel, free_part):
        # sum_r z_rel[r] (free_part V_r + c_r), as one matmul over (relation, dim)
        gated = (z_rel.unsqueeze(2) * free_part.unsqueeze(1)).flatten(1)
        return gated @ self.V.flatten(0, 1) + z_rel @ self.V_bias


class LensHead(ValueHead):
    """s = sum_r z_rel[r] * W_U[answers] LN_f(A_r x_hat_free + c_r), with the LM's own
    final norm LN_f and unembedding W_U as frozen buffers (`attach_readout`) and A_r, c_r
    trained: a tuned lens per relation, starting at the logit lens of the
    reconstruction. It can name answers never seen as a training label, because the LM
    can. Its penalty is the distance from that start (`sae.lens_prior` weighs it)."""

    name = "lens"
    needs_readout = True

    def __init__(self, d_model: int, n_relations: int, n_answers: int,
                 generator: torch.Generator, readout_norm: str = "layer",
                 readout_eps: float = 1e-5, **_options: Any):
        super().__init__()
        if readout_norm not in READOUT_NORMS:
            raise ValueError(f"readout_norm={readout_norm!r}; expected one of {READOUT_NORMS}")
        self.readout_norm, self.readout_eps = readout_norm, float(readout_eps)
        self.A = nn.Parameter(torch.eye(d_model).repeat(n_relations, 1, 1))
        self.c = nn.Parameter(torch.zeros(n_relations, d_model))
        # the LM's final norm and answer unembedding, frozen (filled by attach_readout)
        self.register_buffer("readout_weight", torch.ones(d_model))
        self.register_buffer("readout_bias", torch.zeros(d_model))
        self.register_buffer("unembed", torch.zeros(n_answers, d_model))
        self.register_buffer("unembed_bias", torch.zeros(n_answers))

    @torch.no_grad()
    def attach_readout(self, readout: Readout, b_dec: torch.Tensor) -> None:
        """Copy the LM's read-out in and restart at A_r = I, c_r = b_dec."""
        if readout.unembed.shape != self.unembed.shape:
            raise ValueError(f"readout has {tuple(readout.unembed.shape)} answer embeddings; "
                             f"this SAE needs {tuple(self.unembed.shape)}")
        self.readout_norm, self.readout_eps = readout.norm, float(readout.eps)
        for name in ("readout_weight", "readout_bias", "unembed", "unembed_bias"):
            getattr(self, name).copy_(getattr(readout, name.removeprefix("readout_")))
        self.A.copy_(torch.eye(self.A.shape[1]).expand_as(self.A))
        self.c.copy_(b_dec.expand_as(self.c))

    def logits(self, z_rel, free_part):
        lensed = torch.einsum("bi,roi->bro", free_part, self.A) + self.c  # B x R x d
        logits = readout_logits(lensed, self.readout_norm, self.readout_eps,
                                self.readout_weight, self.readout_bias, self.unembed,
                                self.unembed_bias)  # B x R x answers
        return torch.einsum("br,bra->ba", z_rel.to(logits.dtype), logits)

    def options(self) -> dict[str, Any]:
        return {"readout_norm": self.readout_norm, "readout_eps": self.readout_eps}

    @torch.no_grad()
    def rescale_free_part(self, factor):
        # A_r stays and c_r scales with the input, and the norm's eps with its square:
        # the norm of f v with eps f^2 is exactly the norm of v with eps, so the start
        # A_r = I, c_r = b_dec is still the logit lens of the reconstruction
        self.c.mul_(factor)
        self.readout_eps *= factor**2

    def penalty(self, b_dec: torch.Tensor) -> torch.Tensor:
        """Mean over relations of ||A_r - I||_F^2 + ||c_r - b_dec||^2: zero at the logit
        lens of the reconstruction (b_dec is a moving target, not pulled toward c)."""
        eye = torch.eye(self.A.shape[1], device=self.A.device, dtype=self.A.dtype)
        return (((self.A - eye) ** 2).sum() + ((self.c - b_dec.detach()) ** 2).sum()
                ) / self.A.shape[0]


class SlotOnlyHead(ValueHead):
    """The published variant: s = sum_r MLP_r(z_rel[r]), Linear(1->hidden) -> ReLU ->
    Linear(hidden->vocab). It sees only scalars, so it cannot know who is asked about."""

    name = "slot_only"
    reads_free_part = False

    def __init__(self, d_model: int, n_relations: int, n_answers: int,
                 generator: torch.Generator, slot_only_hidden: int = 256, **_options: Any):
        super().__init__()
        h = slot_only_hidden
        self.head_w1 = nn.Parameter(torch.rand(n_relations, h, generator=generator) * 2 - 1)
        self.head_b1 = nn.Parameter(torch.zeros(n_relations, h))
        self.head_w2 = nn.Parameter(
            (torch.rand(n_relations, h, n_answers, generator=generator) * 2 - 1) / math.sqrt(h))
        self.head_b2 = nn.Parameter(torch.zeros(n_relations, n_answers))

    def logits(self, z_rel, free_part):
        hidden = torch.relu(z_rel.unsqueeze(2) * self.head_w1 + self.head_b1)  # B x R x H
        return torch.einsum("brh,rha->ba", hidden, self.head_w2) + self.head_b2.sum(0)

    def options(self) -> dict[str, Any]:
        return {"slot_only_hidden": self.head_w1.shape[1]}
