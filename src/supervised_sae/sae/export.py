"""Write a trained SAE in SAELens's on-disk format (cfg.json + sae_weights.safetensors),
in the SAELens architecture that reproduces its encode exactly (each encoder's row of
`registry.ENCODERS` names it):

- "standard": ReLU(x @ W_enc + b_enc), all slots as they are (free, then relation);
- "jumprelu": pre * (pre > threshold), with the free slots' inference thresholds
  (`Encoder.free_thresholds`) and 0 for relation slots (a ReLU);
- "topk": over the free bank alone (its budget excludes the relation slots; a TopK over
  all slots would not be ours), the relation slots' weights in the metadata.

The decoder is z @ W_dec + b_dec in each. `apply_b_dec_to_input` is false because our
encoder does not subtract b_dec first. The value heads have no place in SAELens; the
metadata names the relation slots and says where the value heads are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from supervised_sae.atomic import SAELENS_EXPORT, atomic_path, write_json
from supervised_sae.lm.family import ModelFamily
from supervised_sae.registry import encoder_spec
from supervised_sae.sae.io import load_sae

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


def saelens_config(meta: dict[str, Any], source: str, d_sae: int, architecture: dict[str, Any],
                   relation_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    n_free, n_rel = meta["n_free"], meta["n_relations"]
    names = list(meta.get("relation_names", [])) if n_rel else []
    slots = ({name: n_free + k for k, name in enumerate(names)} if relation_weights is None
             else {})  # topk: relation slots are not among the exported slots
    return {
        **architecture,
        "d_in": meta["d_model"],
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0",  # the v6 on-disk format: metadata kept as written
            "model_name": meta.get("activations"),
            "hook_name": ModelFamily.hook_name(int(meta["layer"])),
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": None,
            "supervised_sae": {
                "source": source,
                "mode": meta.get("mode"),
                "layer": meta["layer"],
                "encoder": meta["encoder"],
                "n_free_slots": n_free,
                "relation_slots": slots,
                **({"relation_slot_weights": relation_weights} if relation_weights else {}),
                "value_heads": f"not exported; load {source} with "
                               "supervised_sae.sae.io.load_sae",
            },
        },
    }


def saelens_tensors(model) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict | None]:
    """The tensors, the architecture fields and (topk with relation slots) the relation
    slots' weights, for `model`'s encoder."""
    tensors = {k: getattr(model, k).detach().float().contiguous().clone()
               for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    encoder, n_free = model.encoder, model.n_free
    architecture = encoder_spec(encoder.name).saelens
    if architecture == "standard":
        return tensors, {"architecture": architecture}, None
    if architecture == "topk":
        relations = None
        if model.n_relations:
            relations = {"W_enc": tensors["W_enc"][:, n_free:].t().tolist(),
                         "b_enc": tensors["b_enc"][n_free:].tolist(),
                         "W_dec": tensors["W_dec"][n_free:].tolist(),
                         "activation": "relu, outside the top-k budget"}
            tensors = {"W_enc": tensors["W_enc"][:, :n_free], "b_enc": tensors["b_enc"][:n_free],
                       "W_dec": tensors["W_dec"][:n_free], "b_dec": tensors["b_dec"]}
        return ({k: v.contiguous() for k, v in tensors.items()},
                {"architecture": architecture, "k": encoder.k}, relations)
    threshold = torch.zeros(n_free + model.n_relations)
    threshold[:n_free] = encoder.free_thresholds()
    return ({k: v.contiguous() for k, v in {**tensors, "threshold": threshold}.items()},
            {"architecture": architecture}, None)


def export_saelens(sae_path: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/cfg.json` and `out_dir/sae_weights.safetensors`; return out_dir."""
    model, meta = load_sae(sae_path)
    tensors, architecture, relations = saelens_tensors(model)
    config = saelens_config(meta, str(sae_path), len(tensors["b_enc"]), architecture,
                            relations)
    with atomic_path(out_dir, directory=True, kind=SAELENS_EXPORT) as tmp:
        save_file(tensors, Path(tmp) / WEIGHTS_FILE)
        write_json(Path(tmp) / CONFIG_FILE, config)
    return Path(out_dir)
