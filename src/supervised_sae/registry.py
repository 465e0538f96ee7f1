"""The registries' names, torch-free: what the config check and the Snakefile may name.

Each entry points at its class as "module:Class", imported only when a job builds one,
so building the DAG still imports no torch. Adding an SAE encoder or a value head is one
class in its module plus one line here. (Model families: `supervised_sae.lm.family`.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

ENCODERS: dict[str, str] = {
    "relu": "supervised_sae.sae.encoders:ReLUEncoder",  # the seed's z = ReLU(x W + b)
    "topk": "supervised_sae.sae.encoders:TopKEncoder",  # the k largest free slots fire
    "batchtopk": "supervised_sae.sae.encoders:BatchTopKEncoder",  # k x rows per batch
    "jumprelu": "supervised_sae.sae.encoders:JumpReLUEncoder",  # a threshold per slot
}
VALUE_HEADS: dict[str, str] = {
    "lens": "supervised_sae.sae.value_heads:LensHead",
    "gated": "supervised_sae.sae.value_heads:GatedHead",
    "slot_only": "supervised_sae.sae.value_heads:SlotOnlyHead",
}
DECODER_NORMS = ("none", "unit")
BUDGET_ENCODERS = ("topk", "batchtopk")  # k free slots per row: `sae.k`, AuxK
SPARSITY = ("seed", "per_example")  # the L1 term of the relu encoder
ACTIVATION_NORMS = ("none", "mean_norm")


def resolve(table: dict[str, str], name: str, what: str) -> Any:
    """The class registered as `name` in `table`, or an error listing the known names."""
    try:
        module, _, cls = table[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(table)}") from None
    return getattr(import_module(module), cls)
