"""The registries, torch-free: what the config check and the Snakefile may name.

Each entry points at its class as "module:Class", imported only when a job builds one,
so building the DAG still imports no torch. Adding a value head is one class in its
module plus one line here; adding an SAE encoder is one class in `sae/encoders.py`, one
row of `ENCODERS` and its config fields in `config/spec.py`: the row carries every fact
the rest of the package needs about it (model families: `supervised_sae.lm.family`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class EncoderTerm:
    """A loss term an encoder adds in every stage that trains it."""

    name: str
    """Its name in the training history (computed by `Encoder.terms`)."""
    weight: str
    """The `sae` config key of its weight."""
    ramped: bool = False
    """Whether it warms up with the sparsity weight (`sae.sparse_warmup`)."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything the package needs to know about one free-bank encoder."""

    cls: str
    """Its class, "module:Class"."""
    settings: dict[str, str] = field(default_factory=dict)
    """Constructor argument -> the `sae` config key it is read from."""
    budget: str | None = None
    """The `sae` key of its per-row budget of free slots (None: none; the TopK baseline
    then matches a supervised run's measured L0)."""
    sweepable: tuple[str, ...] = ()
    """The `sae` keys an L0 sweep may set with this encoder."""
    l1: bool = False
    """Whether its sparsity comes from the `sparse` (L1) loss term."""
    terms: tuple[EncoderTerm, ...] = ()
    """Its own loss terms."""
    saelens: str = "standard"
    """The SAELens architecture its export writes (`sae.export`)."""
    label: str = ""
    """Its description on result pages: a format string over the `sae` config."""


AUXK = EncoderTerm("auxk", "auxk_weight")  # dead slots reconstruct the residual
ENCODERS: dict[str, EncoderSpec] = {
    # the seed's z = ReLU(x W + b), sparse only through the L1 term
    "relu": EncoderSpec("supervised_sae.sae.encoders:ReLUEncoder", l1=True,
                        label="`relu`, `{sparsity}` L1 (weight {weights[sparse]:g})"),
    # the k largest free slots fire
    "topk": EncoderSpec("supervised_sae.sae.encoders:TopKEncoder", {"k": "k"}, budget="k",
                        sweepable=("k",), terms=(AUXK,), saelens="topk",
                        label="`topk`, k = {k}"),
    # k x rows per batch while training, one learned threshold after
    "batchtopk": EncoderSpec("supervised_sae.sae.encoders:BatchTopKEncoder", {"k": "k"},
                             budget="k", sweepable=("k",), terms=(AUXK,),
                             saelens="jumprelu", label="`batchtopk`, k = {k}"),
    # BatchTopK whose nested prefixes of the bank each reconstruct (Bussmann et al. 2025)
    "matryoshka": EncoderSpec("supervised_sae.sae.encoders:MatryoshkaEncoder",
                              {"k": "k", "levels": "matryoshka_levels"}, budget="k",
                              sweepable=("k",),
                              terms=(AUXK, EncoderTerm("matryoshka", "matryoshka_weight")),
                              saelens="jumprelu",
                              label="`matryoshka`, k = {k}, {matryoshka_levels} nested "
                                    "prefixes"),
    # a learned threshold per free slot, an L0 penalty
    "jumprelu": EncoderSpec("supervised_sae.sae.encoders:JumpReLUEncoder",
                            {"threshold": "jumprelu_threshold",
                             "bandwidth": "jumprelu_bandwidth", "target_l0": "target_l0"},
                            sweepable=("target_l0",),
                            terms=(EncoderTerm("l0", "l0_weight", ramped=True),),
                            saelens="jumprelu", label="`jumprelu`"),
}
SEED_ENCODER = "relu"  # the seed's encoder: the config's default and the reproduction row's
REFERENCE_ENCODER = "topk"  # the field's standard reference SAE (the TopK baseline)
VALUE_HEADS: dict[str, str] = {
    "lens": "supervised_sae.sae.value_heads:LensHead",
    "gated": "supervised_sae.sae.value_heads:GatedHead",
    "slot_only": "supervised_sae.sae.value_heads:SlotOnlyHead",
}
DECODER_NORMS = ("none", "unit")
SPARSITY = ("seed", "per_example")  # the L1 term of the relu encoder
ACTIVATION_NORMS = ("none", "mean_norm")
# every `sae` key an L0 sweep may set, and those that are per-row budgets (whole numbers)
SWEEP_KEYS = tuple(dict.fromkeys(k for spec in ENCODERS.values() for k in spec.sweepable))
BUDGET_KEYS = tuple(dict.fromkeys(spec.budget for spec in ENCODERS.values() if spec.budget))


def lookup(table: dict[str, Any], name: str, what: str) -> Any:
    """The entry `name` of a table of named things, or an error listing the known names."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(table)}") from None


def encoder_spec(name: str) -> EncoderSpec:
    """The table row of encoder `name`, or an error listing the known encoders."""
    return lookup(ENCODERS, name, "encoder")


def sweepable_by(key: str) -> tuple[str, ...]:
    """The encoders an L0 sweep of `sae.<key>` applies to."""
    return tuple(name for name, spec in ENCODERS.items() if key in spec.sweepable)


def encoder_settings(sae: Any, name: str | None = None) -> dict[str, Any]:
    """The constructor settings of encoder `name` (default: the config's), read from an
    `sae` config section (`SaeConfig`)."""
    name = name or sae.encoder
    return {arg: getattr(sae, key) for arg, key in encoder_spec(name).settings.items()}


def encoder_label(sae: Any) -> str:
    """How a result page names the configured encoder, e.g. "`topk`, k = 64"."""
    values = sae if isinstance(sae, dict) else sae.model_dump()
    return encoder_spec(values["encoder"]).label.format_map(values) or f"`{values['encoder']}`"


def resolve(table: dict[str, Any], name: str, what: str) -> Any:
    """The class registered as `name` in `table`, or an error listing the known names."""
    entry = lookup(table, name, what)
    module, _, cls = (entry.cls if isinstance(entry, EncoderSpec) else entry).partition(":")
    return getattr(import_module(module), cls)
