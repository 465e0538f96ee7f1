"""Write a trained SAE in SAELens's on-disk format (cfg.json + sae_weights.safetensors).

SAELens's "standard" architecture computes ReLU(x @ W_enc + b_enc) and z @ W_dec + b_dec,
exactly our encoder and decoder, so the tensors are written as they are, free slots
followed by relation slots. `apply_b_dec_to_input` is false because our encoder does not
subtract b_dec first. The value heads have no place in SAELens; the metadata names the
relation slots and says where the value heads are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from supervised_sae.atomic import atomic_path, write_json
from supervised_sae.lm.family import ModelFamily
from supervised_sae.sae.io import load_sae

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


def saelens_config(meta: dict[str, Any], source: str) -> dict[str, Any]:
    n_free, n_rel = meta["n_free"], meta["n_relations"]
    names = list(meta.get("relation_names", [])) if n_rel else []
    # a TopK encoder is SAELens's "topk" (ReLU after TopK of the pre-activations, as ours)
    topk = ({"architecture": "topk", "k": meta["encoder_settings"]["k"]}
            if meta["encoder"] == "topk" else {})
    return {
        "architecture": "standard",
        **topk,
        "d_in": meta["d_model"],
        "d_sae": n_free + n_rel,
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
                "n_free_slots": n_free,
                "relation_slots": {name: n_free + k for k, name in enumerate(names)},
                "value_heads": f"not exported; load {source} with "
                               "supervised_sae.model.load_sae",
            },
        },
    }


def export_saelens(sae_path: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/cfg.json` and `out_dir/sae_weights.safetensors`; return out_dir."""
    model, meta = load_sae(sae_path)
    tensors = {k: getattr(model, k).detach().contiguous().float()
               for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    with atomic_path(out_dir, directory=True) as tmp:
        save_file(tensors, Path(tmp) / WEIGHTS_FILE)
        write_json(Path(tmp) / CONFIG_FILE, saelens_config(meta, str(sae_path)))
    return Path(out_dir)
