"""What a local model folder holds, read from its files without loading it: family,
depth, width, vocabulary, parameter count, and where it came from (built here,
fine-tuned here from a pretrained folder, or a pretrained model used as it is).

Torch-free: the config check sizes jobs from it before any job, and the results page
describes the model that ran.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from supervised_sae.lm.family import family_for, read_hf_config

ORIGIN_FILE = "lm_origin.json"
"""Written beside config.json by the LM rules: {"origin": "built here" | "fine-tuned", ...}."""
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1,
               "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I64": 8, "I32": 4}


def _safetensors_parameters(path: Path) -> int:
    """Elements in one .safetensors file, from its JSON header (8-byte length first)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    count = 0
    for name, entry in header.items():
        if name != "__metadata__":
            n = 1
            for dim in entry["shape"]:
                n *= int(dim)
            count += n
    return count


def _weight_files(folder: Path, suffix: str) -> list[Path]:
    stem = "model" if suffix == ".safetensors" else "pytorch_model"
    index = folder / f"{stem}{suffix}.index.json"
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    return sorted(folder.glob(f"*{suffix}"))


def folder_parameters(model_dir: str | Path) -> int:
    """The model's parameter count: exact from safetensors headers; from the size of
    PyTorch .bin files divided by config.json's `torch_dtype` otherwise."""
    folder = Path(model_dir)
    files = _weight_files(folder, ".safetensors")
    if files:
        return sum(_safetensors_parameters(f) for f in files)
    files = _weight_files(folder, ".bin")
    if not files:
        raise ValueError(f"{folder}: no weights (*.safetensors or *.bin) to size the model by")
    dtype = str(read_hf_config(folder).get("torch_dtype") or "float32")
    return sum(f.stat().st_size for f in files) // DTYPE_BYTES.get(dtype, 4)


def read_origin(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / ORIGIN_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"origin": "pretrained, used as it is"}


def describe_lm(model_dir: str | Path) -> dict[str, Any]:
    """Family, depth, width, vocabulary, parameters and origin of a local model folder."""
    hf = read_hf_config(model_dir)
    where = str(Path(model_dir) / "config.json")
    family = family_for(hf.get("model_type"), where)
    return {"family": str(hf.get("model_type")), "depth": family.depth(hf, where),
            "width": family.width(hf, where), "vocab_size": hf.get("vocab_size"),
            "parameters": folder_parameters(model_dir), **read_origin(model_dir)}


def description_line(lm: dict[str, Any]) -> str:
    """One line for a page: 'gpt2, 12 blocks, width 768, vocabulary 50257, 124.4M
    parameters; fine-tuned here from /models/gpt2'."""
    origin = lm["origin"]
    if origin == "fine-tuned":
        origin = (f"fine-tuned here from {lm['pretrained']} (epoch {lm['chosen_epoch']} of "
                  f"{lm['epochs']} kept: {lm['chosen_on']})")
    return (f"{lm['family']}, {lm['depth']} blocks, width {lm['width']}, vocabulary "
            f"{lm['vocab_size']}, {lm['parameters'] / 1e6:.1f}M parameters; {origin}")
