"""Train a GPT-2 language model (and its tokenizer: word-level or byte-level BPE) on
biographies + QA."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.atomic import LM_FOLDER, atomic_path
from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.lm.fit import (
    Schedule,
    check_length,
    fit_lm,
    texts_sha256,
    training_texts,
    write_lm_records,
)
from supervised_sae.lm.tokenizer import build_bpe_tokenizer, build_word_tokenizer, encode

log = logging.getLogger(__name__)


def build_model(vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                eos_token_id: int, pad_token_id: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        # GPT-2's tanh GELU as one fused kernel: ~20% faster training steps on a CPU
        activation_function="gelu_pytorch_tanh",
    )
    return GPT2LMHeadModel(config)


def train_lm(
    bios: pd.DataFrame,
    prompts: pd.DataFrame,
    attribute_values: Sequence[str],
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
    keep_checkpoints: int = 2,
    tokenizer: str = "word",
    bpe_vocab_size: int = 2000,
) -> GPT2LMHeadModel:
    """Train tokenizer and GPT-2 from scratch; save both with save_pretrained to out_dir.

    Resumes from the newest good checkpoint in checkpoint_dir (saved each epoch).
    """
    texts = training_texts(bios, prompts)
    kind, tokenizer = tokenizer, (
        build_bpe_tokenizer(texts, bpe_vocab_size) if tokenizer == "bpe"
        else build_word_tokenizer(texts, attribute_values, every_value=not len(bios)))
    eos = tokenizer.eos_token_id
    ids = [x + [eos] for x in encode(tokenizer, texts)]
    check_length(ids, n_positions, "lm.n_positions")
    model = build_model(len(tokenizer), n_layer, n_embd, n_head, n_positions, eos,
                        tokenizer.pad_token_id, seed).to(device)
    schedule = Schedule(epochs, batch_size, lr, weight_decay, warmup_fraction, seed)
    # everything that changes the trained weights: the texts (biographies and QA of the
    # prompts table), the tokenizer's vocabulary, every hyperparameter and the seed
    store = CheckpointStore(checkpoint_dir, keep=keep_checkpoints, identity={
        "kind": "lm", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
        "n_positions": n_positions, **schedule.identity(),
        "vocab_size": len(tokenizer), "tokenizer": kind,
        "texts_sha256": texts_sha256(texts, *attribute_values)})
    log.info("LM built here: %d layers, width %d, %d heads, vocab %d", n_layer, n_embd,
             n_head, len(tokenizer))
    history = fit_lm(model, ids, tokenizer.pad_token_id, store, schedule, device)
    with atomic_path(out_dir, directory=True, kind=LM_FOLDER) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_lm_records(tmp, history, bios, prompts, {"origin": "built here",
                                                       "tokenizer": kind})
    return model


