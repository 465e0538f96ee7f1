"""Train a GPT-2 language model (and its tokenizer: word-level or byte-level BPE) on
biographies + QA."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from supervised_sae.atomic import atomic_path, write_json
from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.data.biographies import qa_text
from supervised_sae.lm.load import FACTS_READ_FILE, pad_batch
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


def training_texts(bios: pd.DataFrame, prompts: pd.DataFrame) -> list[str]:
    """All biographies plus the QA pairs of train people on seen templates."""
    seen = prompts[(prompts["split"] == "train") & (~prompts["template_heldout"].astype(bool))]
    qa = [qa_text(p, a) for p, a in zip(seen["prompt"], seen["answer"], strict=True)]
    return list(bios["text"]) + qa


def facts_read(bios: pd.DataFrame, prompts: pd.DataFrame) -> dict[str, int]:
    """Which held-out people's facts the LM reads: the biographies of any person, and
    the QA of train people only. Built-in data gives every person biographies; a user's
    prompts table alone gives none, so the LM never reads a held-out person's facts."""
    held_out = set(prompts.loc[prompts["split"] == "test", "person"])
    read = held_out & set(bios["person"]) if len(bios) else set()
    return {"held_out_people": len(held_out), "held_out_people_read": len(read)}


def length_groups(lengths: Sequence[int], min_saving: float = 0.25) -> list[list[int]]:
    """Split one batch's rows (indices into `lengths`) into at most two groups by
    length, when padding each group to its own longest row saves at least
    `min_saving` of the padded positions; otherwise one group.

    Biographies (~55 tokens) and questions (~12) share every random batch, and padding
    them together costs ~2x the positions. The groups are micro-batches of one optimizer
    step, so the batch, and with `next_token_loss` its gradient, stay the same.
    """
    by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in by_length]
    n, longest = len(ordered), ordered[-1]
    # padded positions with the first k rows (shortest) as a group of their own
    cost, k = min((k * ordered[k - 1] + (n - k) * longest, k) for k in range(1, n + 1))
    if k == n or cost > (1 - min_saving) * n * longest:
        return [list(range(n))]
    return [by_length[:k], by_length[k:]]


def _batches(ids: list[list[int]], batch_size: int, rng: random.Random, pad_id: int):
    """Each step's micro-batches: (input_ids, attention mask, labels) per length group."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[start : start + batch_size]]
        micro = []
        for group in length_groups([len(r) for r in rows]):
            input_ids, mask, _ = pad_batch([rows[i] for i in group], pad_id)
            micro.append((input_ids, mask, input_ids.masked_fill(mask == 0, -100)))
        yield micro


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (-100: none), divided by
    the step's target count: micro-batch losses then add up to the batch's mean."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=-100, reduction="sum") / n_targets


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
    longest = max(len(x) for x in ids)
    if longest > n_positions:
        raise ValueError(f"lm.n_positions={n_positions} is shorter than the longest text "
                         f"({longest} tokens); raise lm.n_positions")
    model = build_model(len(tokenizer), n_layer, n_embd, n_head, n_positions, eos,
                        tokenizer.pad_token_id, seed).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, int(total * warmup_fraction))

    def schedule(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # everything that changes the trained weights: the texts (biographies and QA of the
    # prompts table), the tokenizer's vocabulary, every hyperparameter and the seed
    texts_sha256 = hashlib.sha256("\n".join([*texts, "", *attribute_values]).encode())
    store = CheckpointStore(checkpoint_dir, keep=keep_checkpoints, identity={
        "kind": "lm", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
        "n_positions": n_positions, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "warmup_fraction": warmup_fraction,
        "vocab_size": len(tokenizer), "tokenizer": kind,
        "texts_sha256": texts_sha256.hexdigest(), "seed": seed})
    start_epoch, history = 0, []
    state = store.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        log.info("resumed LM training from %s (epoch %d done)", store.latest_path(), start_epoch)
    log.info("LM: %d layers, width %d, %d heads, vocab %d, %.2fM parameters; %d texts, "
             "%d steps/epoch, device %s", n_layer, n_embd, n_head, len(tokenizer),
             sum(p.numel() for p in model.parameters()) / 1e6, len(ids), steps_per_epoch, device)
    model.train()
    for epoch in range(start_epoch, epochs):
        rng = random.Random(seed * 1_000_003 + epoch)  # per-epoch order: resume-exact
        total_loss = torch.zeros((), device=device)
        bar = tqdm(_batches(ids, batch_size, rng, tokenizer.pad_token_id), total=steps_per_epoch,
                   desc=f"LM epoch {epoch + 1}/{epochs}", leave=False, mininterval=2)
        for micro in bar:
            n_targets = sum(int(mask[:, 1:].sum()) for _, mask, _ in micro)
            optimizer.zero_grad(set_to_none=True)
            for input_ids, mask, labels in micro:
                logits = model(input_ids=input_ids.to(device),
                               attention_mask=mask.to(device)).logits
                loss = next_token_loss(logits, labels.to(device), n_targets)
                loss.backward()
                total_loss += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
        mean_loss = float(total_loss) / steps_per_epoch
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"LM training: non-finite loss in epoch {epoch + 1}")
        history.append({"epoch": epoch + 1, "loss": mean_loss})
        log.info("LM epoch %d/%d: loss %.4f", epoch + 1, epochs, mean_loss)
        store.save(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch,
                           "history": history})
    model.eval()
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "training_history.json", history)
        write_json(Path(tmp) / FACTS_READ_FILE, facts_read(bios, prompts))
    return model


