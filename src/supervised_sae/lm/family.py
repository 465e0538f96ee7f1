"""Model families: where a Hugging Face causal LM keeps its blocks and final norm, how
that norm computes, which config.json key gives its depth, and its hook names.

A new family is one class here plus one line in `FAMILIES`. Torch-free at import: the
config check reads a model folder's depth through `folder_depth` before any job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar


class UnsupportedModelError(ValueError):
    """A model whose family this package does not know how to read."""


def attribute(obj: Any, path: str) -> Any:
    """obj.a.b.c for path "a.b.c"; None where any part is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class ModelFamily:
    """One block layout. Subclasses set the class attributes; the methods read them."""

    model_types: ClassVar[tuple[str, ...]]
    """config.json `model_type` values of this family."""
    blocks_path: ClassVar[str]
    """Attribute path of the list of transformer blocks."""
    final_norm_path: ClassVar[str]
    """Attribute path of the norm after the last block."""
    norm_kind: ClassVar[str] = "layer"
    """"layer" (LayerNorm: weight and bias) or "rms" (RMSNorm: weight only)."""
    norm_weight_offset: ClassVar[float] = 0.0
    """Gemma's RMSNorm scales by (1 + w): the stored weight is w, the scale 1 + w."""
    depth_keys: ClassVar[tuple[str, ...]] = ("num_hidden_layers",)
    width_keys: ClassVar[tuple[str, ...]] = ("hidden_size",)
    """config.json keys of the residual stream's width."""

    @classmethod
    def name(cls) -> str:
        return cls.model_types[0]

    @classmethod
    def blocks(cls, model: Any) -> Any:
        blocks = attribute(model, cls.blocks_path)
        if blocks is None:
            raise UnsupportedModelError(f"{type(model).__name__}: no {cls.blocks_path} (the "
                                        f"{cls.name()} family's block list)")
        return blocks

    @classmethod
    def final_norm(cls, model: Any) -> Any:
        norm = attribute(model, cls.final_norm_path)
        if norm is None or getattr(norm, "weight", None) is None:
            raise UnsupportedModelError(f"{type(model).__name__}: no {cls.final_norm_path} "
                                        f"with a weight (the {cls.name()} family's final norm)")
        return norm

    @classmethod
    def check(cls, model: Any, where: str) -> None:
        """Refuse variants of the family whose read-out this class does not describe."""

    @classmethod
    def depth(cls, hf_config: dict[str, Any], where: str) -> int:
        return cls._read(hf_config, cls.depth_keys, "depth", where)

    @classmethod
    def width(cls, hf_config: dict[str, Any], where: str) -> int:
        return cls._read(hf_config, cls.width_keys, "width", where)

    @classmethod
    def _read(cls, hf_config: dict[str, Any], keys: tuple[str, ...], what: str,
              where: str) -> int:
        for key in keys:
            if key in hf_config:
                return int(hf_config[key])
        raise UnsupportedModelError(f"{where}: no {' / '.join(keys)} key; cannot tell the "
                                    f"{what} of this {cls.name()} model")

    @staticmethod
    def hook_name(layer: int) -> str:
        """TransformerLens / SAELens hook of the residual stream after block `layer`; the
        embedding output (-1) is block 0's input."""
        return "blocks.0.hook_resid_pre" if layer < 0 else f"blocks.{layer}.hook_resid_post"


class GPT2(ModelFamily):
    model_types = ("gpt2",)
    blocks_path, final_norm_path = "transformer.h", "transformer.ln_f"
    depth_keys = ("n_layer", "num_hidden_layers")
    width_keys = ("n_embd", "hidden_size")


class Llama(ModelFamily):
    model_types = ("llama", "mistral")
    blocks_path, final_norm_path, norm_kind = "model.layers", "model.norm", "rms"


class Qwen2(Llama):
    model_types = ("qwen2",)


class Gemma(ModelFamily):
    model_types = ("gemma",)
    blocks_path, final_norm_path, norm_kind = "model.layers", "model.norm", "rms"
    norm_weight_offset = 1.0


class GPTNeoX(ModelFamily):
    model_types = ("gpt_neox",)
    blocks_path, final_norm_path = "gpt_neox.layers", "gpt_neox.final_layer_norm"


class OPT(ModelFamily):
    model_types = ("opt",)
    blocks_path, final_norm_path = "model.decoder.layers", "model.decoder.final_layer_norm"

    @classmethod
    def check(cls, model: Any, where: str) -> None:
        if attribute(model, "model.decoder.project_out") is not None:
            raise UnsupportedModelError(f"{where}: OPT with project_out (a projection after "
                                        "the final norm) is not supported")
        if not getattr(model.config, "do_layer_norm_before", True):
            raise UnsupportedModelError(f"{where}: OPT with do_layer_norm_before=false has "
                                        "no final norm before its head; not supported")


FAMILIES: dict[str, type[ModelFamily]] = {
    t: family for family in (GPT2, Llama, Qwen2, Gemma, GPTNeoX, OPT)
    for t in family.model_types
}


def family_for(model_type: str | None, where: str) -> type[ModelFamily]:
    """The family of a config.json `model_type`, or an error naming it and the known ones."""
    try:
        return FAMILIES[str(model_type)]
    except KeyError:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not a supported model family; "
            f"supported: {', '.join(sorted(FAMILIES))}") from None


def family_of(model: Any, where: str = "the model") -> type[ModelFamily]:
    """The family of a loaded model, checked for variants it cannot read."""
    family = family_for(getattr(model.config, "model_type", None), where)
    family.check(model, where)
    return family


def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{model_dir}: no config.json there; expected a local "
                                    "Hugging Face model folder (save_pretrained)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UnsupportedModelError(f"{path}: not valid JSON: {err}") from err


def folder_depth(model_dir: str | Path) -> int:
    """Number of transformer blocks of the model in a local folder, from config.json."""
    hf = read_hf_config(model_dir)
    where = str(Path(model_dir) / "config.json")
    return family_for(hf.get("model_type"), where).depth(hf, where)


def folder_width(model_dir: str | Path) -> int:
    """Width of the residual stream of the model in a local folder, from config.json."""
    hf = read_hf_config(model_dir)
    where = str(Path(model_dir) / "config.json")
    return family_for(hf.get("model_type"), where).width(hf, where)


def transformer_blocks(model: Any, where: str = "the model") -> Any:
    """The list of transformer blocks of a loaded model of a known family."""
    return family_of(model, where).blocks(model)
