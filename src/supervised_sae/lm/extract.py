"""Stream residual-stream activations at each prompt's last token into HDF5.

The file's layout is `supervised_sae.data.store_layout`; it is written through
`supervised_sae.data.store_writer.ActivationWriter`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from supervised_sae.backend import keep_freed_cpu_memory
from supervised_sae.data.prompts import SPLIT_CODES, table_sha256
from supervised_sae.data.store_layout import DTYPES
from supervised_sae.data.store_writer import ActivationWriter
from supervised_sae.layers import EMBEDDINGS
from supervised_sae.lm.answers import answer_token_ids
from supervised_sae.lm.family import transformer_blocks
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.load import lm_sha256, load_lm, pad_batch
from supervised_sae.lm.tokenizer import encode

log = logging.getLogger(__name__)

WINDOW_BATCHES = 8  # batches sorted by length together, and rows per HDF5 chunk write


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
    """One forward pass per batch collects every layer.

    Prompts run in windows of `WINDOW_BATCHES` batches, sorted by length inside each
    window so batches carry little padding; each window is written to HDF5 in prompt
    order as it completes (whole chunks), so memory stays flat in the prompt count.
    The LM head is skipped: only the blocks' outputs are needed. On CPU it sets glibc
    to keep freed memory for the rest of the process (`backend.keep_freed_cpu_memory`).
    """
    if torch.device(device).type == "cpu":
        # freed blocks are reused rather than page-faulted afresh each batch (~15% of a
        # CPU forward pass)
        keep_freed_cpu_memory()
    model, tokenizer = load_lm(model_dir, device)
    body = model.base_model  # the blocks without the LM head
    blocks = transformer_blocks(model)
    n_layers, n = len(blocks), len(prompts)
    stored = [EMBEDDINGS, *range(n_layers)]  # every layer the file holds, in this order
    d_model = model.config.hidden_size
    texts, answers = list(prompts["prompt"]), list(prompts["answer"])
    answer_ids: list[list[int]] = []  # each answer's token ids, filled per window

    context = model.config.max_position_embeddings
    captured: dict[int, torch.Tensor] = {}
    np_dtype = DTYPES[dtype]

    # prompts holding a word the tokenizer does not know: a paraphrase of unknown words
    # measures robustness to the unknown token, not recognition; users are told
    unknown: dict[str, Any] = {"count": 0, "example": None}

    def tokenize(start: int, stop: int) -> tuple[list[list[int]], list[list[int]]]:
        """One window's token ids and answers' token ids. Per window because Python token
        lists cost ~1 KB a prompt: holding all would grow memory with the prompt count."""
        encoded = encode(tokenizer, texts[start:stop])
        longest = max(len(e) for e in encoded)
        if longest > context:
            raise ValueError(f"a prompt has {longest} tokens, more than the model's context "
                             f"({context})")
        if tokenizer.unk_token_id is not None:
            with_unknown = [start + i for i, e in enumerate(encoded)
                            if tokenizer.unk_token_id in e]
            unknown["count"] += len(with_unknown)
            if with_unknown and unknown["example"] is None:
                unknown["example"] = with_unknown[0]
        return encoded, answer_token_ids(tokenizer, texts[start:stop], answers[start:stop],
                                         prompt_ids=encoded, first_index=start)

    def window_activations(encoded: list[list[int]]) -> np.ndarray:
        """[stored layers, rows, d_model] at each prompt's last token, in the window's
        order; batches are cut from the window sorted by length (little padding)."""
        by_length = np.argsort([len(e) for e in encoded], kind="stable")
        acts = np.empty((len(stored), len(encoded), d_model), np_dtype)
        for b in range(0, len(encoded), batch_size):
            rows = by_length[b : b + batch_size]
            ids, mask, last = pad_batch([encoded[i] for i in rows], tokenizer.pad_token_id)
            with torch.inference_mode():
                body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                at_last = torch.arange(len(rows), device=device), last.to(device)
                batch = torch.stack([captured[k][at_last] for k in stored])
            acts[:, rows] = batch.float().cpu().numpy()
            captured.clear()
        return acts

    def save(layer: int):
        def keep(hidden: torch.Tensor) -> None:
            captured[layer] = hidden
        return keep

    handles = [hook_residual(blocks, k, save(k)) for k in stored]
    window = WINDOW_BATCHES * batch_size
    rel_index = {r: k for k, r in enumerate(relations)}
    try:
        with ActivationWriter(out_path, n, d_model, stored, n_layers, dtype, chunk_rows=window,
                              model_path=str(model_dir), lm_sha256=lm_sha256(model),
                              prompts_sha256=table_sha256(prompts)) as writer:
            writer.write_labels(
                relation=prompts["relation"].map(rel_index).to_numpy(np.int64),
                person=prompts["person"].to_numpy(np.int64),
                split=prompts["split"].map(SPLIT_CODES).to_numpy(np.int8),
                template=prompts["template"].to_numpy(np.int64),
                template_heldout=prompts["template_heldout"].to_numpy(bool),
                relation_names=relations)
            progress = tqdm(total=n, desc="extract", unit="prompt", mininterval=2)
            # the next window is tokenised on a thread while this one runs the model
            # (the Rust tokenizer and torch's kernels both release the GIL)
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(tokenize, 0, min(n, window))
                for start in range(0, n, window):
                    stop = min(n, start + window)
                    encoded, window_answers = pending.result()
                    answer_ids.extend(window_answers)
                    if stop < n:
                        pending = pool.submit(tokenize, stop, min(n, stop + window))
                    writer.write_rows(start, window_activations(encoded))
                    progress.update(stop - start)
            progress.close()
            writer.write_answers(answer_ids, answers)
    finally:
        for h in handles:
            h.remove()
    if unknown["count"]:
        row = unknown["example"]
        log.warning("%d of %d prompts hold a token unknown to the tokenizer (%s), e.g. row "
                    "%d: %r -> %s", unknown["count"], n, tokenizer.unk_token, row, texts[row],
                    tokenizer.convert_ids_to_tokens(encode(tokenizer, [texts[row]])[0]))
    log.info("wrote %s: %d prompts x %d layers (embeddings + %d blocks) x %d dims (%s)",
             out_path, n, len(stored), n_layers, d_model, dtype)
