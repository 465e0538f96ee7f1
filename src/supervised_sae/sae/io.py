"""The SAE file: tensors plus plain metadata, loadable with torch.load(weights_only=True)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from supervised_sae.atomic import torch_save
from supervised_sae.sae.model import SupervisedSAE, make_encoder

# v2: the value head's tensors live under `head.`, the encoder is named in the metadata
SAE_FORMAT = "supervised_sae.sae.v2"
OLDER_FORMATS = ("supervised_sae.sae.v1",)


def save_sae(path: str | Path, model: SupervisedSAE, metadata: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save({"format": SAE_FORMAT, "state_dict": state,
                "metadata": {**model.shape_metadata(), **metadata}}, path)


# training-only state a file may lack (AuxK's bookkeeping, absent from TopK files written
# before it): zeros when missing
OPTIONAL_STATE = ("encoder.rows_since_fired",)


def sae_from_metadata(meta: dict[str, Any]) -> SupervisedSAE:
    """A freshly initialised SAE of the shape a saved file's metadata describes (under
    `torch.device("meta")`: its shape without allocating or initialising tensors)."""
    return SupervisedSAE(meta["d_model"], meta["n_free"], meta["n_relations"],
                         meta["n_answers"], value_head=meta["value_head"],
                         decoder_norm=meta["decoder_norm"],
                         encoder=make_encoder(meta["encoder"], meta["encoder_settings"],
                                              meta["n_free"]),
                         **meta["value_head_options"])


def load_sae(path: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[SupervisedSAE, dict[str, Any]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot load as a supervised_sae model file: {err}") from err
    if isinstance(blob, dict) and blob.get("format") in OLDER_FORMATS:
        raise ValueError(f"{path}: an SAE file of an older layout ({blob['format']}); "
                         f"this version reads {SAE_FORMAT}: train it again")
    if not isinstance(blob, dict) or blob.get("format") != SAE_FORMAT:
        raise ValueError(f"{path}: not a supervised_sae model file (format {SAE_FORMAT})")
    meta = blob["metadata"]
    with torch.device("meta"):  # the file's tensors replace these; no random init
        model = sae_from_metadata(meta)
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False, assign=True)
    for name in set(missing) & set(OPTIONAL_STATE):
        module, _, buffer = name.rpartition(".")
        old = model.get_buffer(name)
        model.get_submodule(module).register_buffer(
            buffer, torch.zeros(old.shape, dtype=old.dtype))
    missing = [k for k in missing if k not in OPTIONAL_STATE]
    if missing or unexpected:
        raise ValueError(f"{path}: its tensors do not fit its metadata (missing "
                         f"{missing}, unexpected {unexpected}): train it again")
    return model.to(device).eval(), meta  # eval: BatchTopK fires by its threshold
