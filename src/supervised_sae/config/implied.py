"""What a checked config implies: the LM's depth, the layers to study, a rule's sections.

Torch-free: the Snakefile builds its DAG from these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from supervised_sae.config.load import ConfigError
from supervised_sae.config.spec import LmConfig, StudyConfig
from supervised_sae.layers import EMBEDDINGS_NAME, layer_name, parse_layer


def _from_model_folder(lm: LmConfig, read: Callable[[str], int]) -> int:
    """A number read from the pretrained model folder's config.json, errors naming the key."""
    from supervised_sae.lm.family import UnsupportedModelError

    try:
        return read(lm.pretrained)
    except UnsupportedModelError as err:
        raise ConfigError(f"lm.pretrained={lm.pretrained!r}: {err}") from err


def model_depth(lm: LmConfig) -> int:
    """Number of transformer blocks of the LM the workflow will use."""
    from supervised_sae.lm.family import folder_depth

    return _from_model_folder(lm, folder_depth) if lm.pretrained else int(lm.n_layer)


def model_width(lm: LmConfig) -> int:
    """Width of the residual stream of the LM the workflow will use."""
    from supervised_sae.lm.family import folder_width

    return _from_model_folder(lm, folder_width) if lm.pretrained else int(lm.n_embd)


def sae_job_memory_mb(config: StudyConfig, attempt: int = 1) -> int:
    """Host memory of an SAE training job: parameters, gradients and AdamW state (x5,
    with slack) of encoder and decoder over every slot, plus one layer's activations as
    float32 (about 5 prompts per person and relation); more on each retry."""
    width = model_width(config.lm)
    slots = config.sae.n_free + len(config.data.relations)
    params = 2 * width * slots
    prompts = config.data.n_people * len(config.data.relations) * 5
    return int(1024 + attempt * (params * 4 * 5 + prompts * width * 4) / 2**20)


def selected_layers(config: StudyConfig) -> list[int]:
    """The config's `layers` as numbers (-1: the embedding output), checked against the
    model's depth."""
    depth = model_depth(config.lm)
    if config.layers == "all":
        return list(range(depth))
    return _within_depth("layers", config.layers, depth)


def _within_depth(key: str, given: Sequence[int | str], depth: int) -> list[int]:
    """`given` layers as numbers, or an error naming the config key and those outside."""
    layers = [parse_layer(x) for x in given]
    bad = [x for x, layer in zip(given, layers, strict=True) if layer >= depth]
    if bad:
        raise ConfigError(f"config {key} {bad} are outside the model's depth: it has "
                          f"layers 0..{depth - 1} (and {EMBEDDINGS_NAME!r}, the embeddings)")
    return layers


def _path_layer(config: StudyConfig, key: str, layer: int | str | None) -> str | None:
    """One configured layer as paths name it ("emb", "2"), checked against the model's
    depth under its config key; None when not set."""
    if layer is None:
        return None
    return layer_name(_within_depth(key, [layer], model_depth(config.lm))[0])


def sweep_layer(config: StudyConfig) -> str | None:
    """The L0 sweep's layer as paths name it; None without a sweep."""
    if not config.sweep.values:
        return None
    return _path_layer(config, "sweep.layer", config.sweep.layer)


def reproduction_layer(config: StudyConfig) -> str | None:
    """The reproduction row's layer as paths name it; None without one."""
    return _path_layer(config, "reproduction.layer", config.reproduction.layer)


def sections(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The parts of a config dict a rule passes as `params: config=`: whole sections
    ("sae") or single keys ("evaluation.probe_steps"), nested as in the config."""
    picked: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        if name:
            picked.setdefault(section, {})[name] = config[section][name]
        else:
            picked[section] = config[section]
    return picked


def draw_sections(config: dict[str, Any], draw: int, *keys: str,
                  sae: dict[str, Any] | None = None) -> dict[str, Any]:
    """`sections` of draw `draw`'s config: the study's with seed + draw, so draw d's jobs
    are exactly those of the study run with `--config seed=<seed + d>`; `sae`, settings a
    sweep point or the reproduction row changes (`runs.sae_overrides`)."""
    changed = {**config, "seed": config["seed"] + draw}
    if sae:
        changed["sae"] = {**config["sae"], **sae}
    return sections(changed, *keys)
