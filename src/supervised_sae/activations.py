"""Stream residual-stream activations at each prompt's last token into HDF5.

Layout of the file (readable with plain h5py):
  layers/{L}        float [n_prompts, d_model]  output of block L at the prompt's last token
  relation          int   index into relation_names
  answer            int   index into answer_tokens (the answer's first token)
  answer_token_id   int   the LM's token id of that first token
  person, template  int
  split             int   0 train, 1 test
  template_heldout  bool
  relation_names, answer_tokens   strings
  attrs: d_model, n_layers, model_path, dtype, package_version, prompts_sha256
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__
from .atomic import atomic_path
from .lm import load_lm, pad_batch
from .tokenization import answer_first_tokens, encode

log = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "float16": np.float16}


def transformer_blocks(model) -> Sequence[torch.nn.Module]:
    """The list of transformer blocks of a Hugging Face causal LM."""
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks "
                     "(looked for transformer.h, model.layers, gpt_neox.layers)")


def table_sha256(prompts: pd.DataFrame) -> str:
    cols = ["person", "relation", "prompt", "answer", "split", "template", "template_heldout"]
    return hashlib.sha256(prompts[cols].to_csv(index=False).encode()).hexdigest()


def extract_activations(
    model_dir: str | Path,
    prompts: pd.DataFrame,
    relations: Sequence[str],
    out_path: str | Path,
    *,
    batch_size: int = 256,
    dtype: str = "float32",
    device: str = "cpu",
) -> None:
    """One forward pass per batch collects every layer; each batch is written as it comes."""
    model, tokenizer = load_lm(model_dir, device)
    blocks = transformer_blocks(model)
    n_layers, n = len(blocks), len(prompts)
    d_model = model.config.hidden_size
    token_ids = answer_first_tokens(tokenizer, list(prompts["prompt"]), list(prompts["answer"]))
    vocab_ids = sorted(set(token_ids))
    answer_index = {t: k for k, t in enumerate(vocab_ids)}
    encoded = encode(tokenizer, prompts["prompt"])
    if max(len(e) for e in encoded) > model.config.max_position_embeddings:
        raise ValueError(f"a prompt is longer than the model's context "
                         f"({model.config.max_position_embeddings} tokens)")

    captured: dict[int, torch.Tensor] = {}

    def hook(layer: int):
        def save(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return save

    handles = [b.register_forward_hook(hook(k)) for k, b in enumerate(blocks)]
    np_dtype = DTYPES[dtype]
    try:
        with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
            chunk_rows = max(1, min(n, 1024))
            layer_sets = [
                f.create_dataset(f"layers/{k}", shape=(n, d_model), dtype=np_dtype,
                                 chunks=(chunk_rows, d_model))
                for k in range(n_layers)
            ]
            rel_index = {r: k for k, r in enumerate(relations)}
            f["relation"] = prompts["relation"].map(rel_index).to_numpy(np.int64)
            f["answer"] = np.array([answer_index[t] for t in token_ids], dtype=np.int64)
            f["answer_token_id"] = np.array(token_ids, dtype=np.int64)
            f["person"] = prompts["person"].to_numpy(np.int64)
            f["split"] = (prompts["split"] == "test").to_numpy(np.int8)
            f["template"] = prompts["template"].to_numpy(np.int64)
            f["template_heldout"] = prompts["template_heldout"].to_numpy(bool)
            strings = h5py.string_dtype()
            f.create_dataset("relation_names", data=list(relations), dtype=strings)
            f.create_dataset("answer_tokens", data=tokenizer.convert_ids_to_tokens(vocab_ids),
                             dtype=strings)
            f.attrs.update(d_model=d_model, n_layers=n_layers, model_path=str(model_dir),
                           dtype=dtype, package_version=__version__,
                           prompts_sha256=table_sha256(prompts), n_prompts=n)
            with torch.no_grad():
                for start in tqdm(range(0, n, batch_size), desc="extract", mininterval=2):
                    ids, mask, last = pad_batch(encoded[start : start + batch_size],
                                                tokenizer.pad_token_id)
                    model(input_ids=ids.to(device), attention_mask=mask.to(device))
                    rows = torch.arange(len(last))
                    for k in range(n_layers):
                        acts = captured[k][rows, last.to(device)].float().cpu().numpy()
                        layer_sets[k][start : start + len(last)] = acts.astype(np_dtype)
                    captured.clear()
    finally:
        for h in handles:
            h.remove()
    log.info("wrote %s: %d prompts x %d layers x %d dims (%s)", out_path, n, n_layers,
             d_model, dtype)
