"""Files that must agree with each other, checked where they meet, before any compute.

Each file can be valid on its own and still not belong with the others: a prompts table
in another order, an SAE trained on another layer or on other activations. Every
mismatch is one line naming both files and the field that differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py

if TYPE_CHECKING:
    from supervised_sae.data.store_reader import LayerData


class Missing:
    """Not given (None means: given, and the file records no hash)."""


MISSING = Missing()


class MismatchError(ValueError):
    """Two input files that each look fine but do not belong together."""


def _short(digest: str) -> str:
    return f"{digest[:12]}..."


def check_sae_fits_layer(sae_path: str | Path, meta: dict[str, Any], activations: str | Path,
                         data: LayerData) -> None:
    """An SAE file (its saved metadata) against the activation layer it is about to be
    used on: layer, relation names, answer list and the activations' content hash."""
    trained_layer = meta.get("layer")
    if trained_layer is not None and int(trained_layer) != data.layer:
        raise MismatchError(f"{sae_path} was trained on layer {trained_layer}, but layer "
                            f"{data.layer} of {activations} was asked for")
    names = meta.get("relation_names")
    if names is not None and list(names) != list(data.relation_names):
        raise MismatchError(f"{sae_path} has relations {list(names)}, but {activations} has "
                            f"{list(data.relation_names)}")
    answers, ours = meta.get("answer_values"), list(data.answer_values)
    if answers is None and "answer_tokens" in meta:
        raise MismatchError(f"{sae_path} was trained on first-token answers (a store before "
                            "format 2); train it again on the activations extracted now")
    if answers is not None and list(answers) != ours:
        differ = next((k for k, (a, b) in enumerate(zip(answers, ours, strict=False))
                       if a != b), min(len(answers), len(ours)))
        raise MismatchError(f"{sae_path} has {len(answers)} answer values, {activations} has "
                            f"{len(ours)}; they differ from position {differ}: not the same "
                            "answer list")
    stored = meta.get("activations_sha256")
    if stored and stored != data.fingerprint:
        raise MismatchError(f"{sae_path} was trained on activations with content hash "
                            f"{_short(stored)}, but layer {data.layer} of {activations} hashes "
                            f"to {_short(data.fingerprint)}: not the same activations")


def check_prompts_match_activations(prompts_path: str | Path, table_sha256: str,
                                    activations: str | Path,
                                    stored: str | None | Missing = MISSING) -> None:
    """The prompts table against the one the activations were extracted from (rows in
    the same order: row i of each is the same prompt). `stored`: the file's recorded
    hash when the caller has read it already (`LayerData.prompts_sha256`)."""
    if isinstance(stored, Missing):
        with h5py.File(activations, "r") as f:
            stored = f.attrs.get("prompts_sha256")
    if stored is None:
        raise MismatchError(f"{activations} records no prompts_sha256 (the prompts table it "
                            f"was extracted from), so {prompts_path} cannot be checked "
                            "against it; extract it again with this version (snakemake "
                            "--forcerun extract_activations, or supervised-sae extract)")
    if str(stored) != table_sha256:
        raise MismatchError(f"{prompts_path} is not the prompts table {activations} was "
                            f"extracted from (content hash {_short(table_sha256)}, the file "
                            f"records {_short(str(stored))}); rows must match one to one")


def check_lm_made_activations(model_dir: str | Path, model_sha256: str,
                              activations: str | Path, stored: str | None) -> None:
    """The LM against the one the activations were extracted with (its weights' hash):
    another LM of the same width would be accepted silently otherwise. A file that
    records no LM is refused too, never trusted."""
    if stored is None:
        raise MismatchError(f"{activations} records no lm_sha256 (the LM it was extracted "
                            f"with), so it cannot be paired with {model_dir}; extract it "
                            "again with this version (snakemake --forcerun "
                            "extract_activations, or supervised-sae extract)")
    if stored != model_sha256:
        raise MismatchError(f"{model_dir} is not the LM {activations} was extracted with "
                            f"(weights hash {_short(model_sha256)}, the file records "
                            f"{_short(stored)})")
