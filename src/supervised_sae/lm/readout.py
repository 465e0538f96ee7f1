"""An LM's own read-out: its final norm, then the unembedding of the answer tokens (the
logit lens). The `lens` value head and the logit-lens references share it.

Torch only (no transformers): the SAE package reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from supervised_sae.lm.family import family_of

READOUT_NORMS = ("layer", "rms")


@dataclass
class Readout:
    """An LM's own map from its residual stream to answer logits: the final norm, then
    the unembedding restricted to the answer tokens (the logit lens)."""

    norm: str  # "layer" (LayerNorm) or "rms" (RMSNorm)
    eps: float
    weight: torch.Tensor  # [d_model]
    bias: torch.Tensor  # [d_model]; zeros for RMSNorm
    unembed: torch.Tensor  # [n_answers, d_model]: the answer tokens' output embeddings
    unembed_bias: torch.Tensor  # [n_answers]; zeros when the LM head has no bias

    def to(self, device: str | torch.device) -> Readout:
        return Readout(self.norm, self.eps, *(t.to(device) for t in (
            self.weight, self.bias, self.unembed, self.unembed_bias)))


def readout_logits(h: torch.Tensor, norm: str, eps: float, weight: torch.Tensor,
                   bias: torch.Tensor, unembed: torch.Tensor, unembed_bias: torch.Tensor
                   ) -> torch.Tensor:
    """Answer logits of residual-stream vectors h [..., d_model] through a final norm and
    unembedding; the value head `lens` and the logit lens share it."""
    if norm == "layer":
        normed = F.layer_norm(h, (h.shape[-1],), weight, bias, eps)
    else:  # RMSNorm as Llama computes it: in float32, scaled after
        h32 = h.float()
        normed = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
        normed = normed * weight
    return normed @ unembed.t() + unembed_bias


def apply_readout(readout: Readout, h: torch.Tensor) -> torch.Tensor:
    return readout_logits(h, readout.norm, readout.eps, readout.weight, readout.bias,
                          readout.unembed, readout.unembed_bias)




def final_readout(model, answer_token_ids: Sequence[int], where: str | Path = "the model"
                  ) -> Readout:
    """The LM's final norm and its output embeddings of the answer tokens (frozen
    copies): residual stream -> answer logits, as the LM computes them after its last
    block. The family says where the norm is and how it scales (Gemma's 1 + w is
    folded into the weight)."""
    family = family_of(model, str(where))
    norm = family.final_norm(model)
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{where}: no output embeddings (get_output_embeddings()); the lens "
                         "value head and the logit lens need them")
    weight = norm.weight.detach().float().cpu() + family.norm_weight_offset
    if family.norm_kind == "layer":
        eps = norm.eps
        bias = (norm.bias.detach().float().cpu() if getattr(norm, "bias", None) is not None
                else torch.zeros_like(weight))
    else:  # RMSNorm: weight only
        bias = torch.zeros_like(weight)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    ids = torch.as_tensor(list(answer_token_ids), dtype=torch.long)
    unembed = head.weight.detach().float().cpu()[ids].clone()
    head_bias = getattr(head, "bias", None)
    unembed_bias = (head_bias.detach().float().cpu()[ids].clone() if head_bias is not None
                    else torch.zeros(len(ids)))
    return Readout(family.norm_kind, float(eps), weight, bias, unembed, unembed_bias)


@torch.no_grad()
def check_final_readout(model, where: str | Path = "the model", n_tokens: int = 6,
                        n_answers: int = 64) -> None:
    """The read-out as this package computes it (final norm, unembedding) against the
    model's own logits on a few tokens: a family read wrongly (a norm scaled otherwise,
    logits rescaled or capped after the head) is refused here, by name."""
    from supervised_sae.lm.family import UnsupportedModelError
    from supervised_sae.lm.hooks import hook_residual

    family = family_of(model, str(where))
    blocks = family.blocks(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    ids = (torch.arange(1, n_tokens + 1, device=device) % vocab)[None]
    caught: dict[str, torch.Tensor] = {}
    handle = hook_residual(blocks, len(blocks) - 1, lambda h: caught.update(h=h))
    try:
        logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    answers = list(range(min(vocab, n_answers)))
    ours = apply_readout(final_readout(model, answers, where).to(device), caught["h"].float())
    theirs = logits[..., answers].float()
    gap = float((ours - theirs).abs().max())
    if gap > 1e-3 * max(1.0, float(theirs.abs().max())):
        raise UnsupportedModelError(
            f"{where}: a {family.name()} model whose final norm and unembedding, read as this "
            f"package reads that family, give other logits than the model's own (largest "
            f"difference {gap:.3g}); its read-out is not supported")
