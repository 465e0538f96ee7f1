"""SAE encoders: the activation that turns pre-activations x W_enc + b_enc into a code.

Relation slots (the last ones) are never part of a sparsity budget: they are supervised
one-hot and always go through a ReLU. Register a new encoder in
`supervised_sae.registry.ENCODERS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class Encoder:
    """An activation over [rows, n_free + n_relations] pre-activations."""

    name: ClassVar[str]

    def activate(self, pre: torch.Tensor, n_free: int) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What a saved SAE records to rebuild this encoder (`encoder_settings`)."""
        return {}


class ReLUEncoder(Encoder):
    """z = ReLU(pre): the seed's encoder."""

    name = "relu"

    def activate(self, pre: torch.Tensor, n_free: int) -> torch.Tensor:
        return torch.relu(pre)


class TopKEncoder(Encoder):
    """ReLU(TopK(pre)) over the free slots (Gao et al. 2024): at most k free slots fire
    per row; relation slots are outside the budget (ReLU)."""

    name = "topk"

    def __init__(self, k: int):
        self.k = int(k)

    def activate(self, pre: torch.Tensor, n_free: int) -> torch.Tensor:
        if not 0 < self.k <= n_free:
            raise ValueError(f"topk k={self.k}: expected 1..n_free ({n_free})")
        free = pre[:, :n_free] if pre.shape[1] > n_free else pre
        values, index = free.topk(self.k, dim=1)
        z_free = torch.zeros_like(free).scatter_(1, index, torch.relu(values))
        if pre.shape[1] == n_free:
            return z_free
        return torch.cat([z_free, torch.relu(pre[:, n_free:])], dim=1)

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}
