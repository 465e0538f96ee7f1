"""The next-token training loop shared by the LM built here and a fine-tuned local model:
length-grouped batches, AdamW with warm-up and cosine decay, a checkpoint per epoch."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from supervised_sae.atomic import write_json
from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.data.biographies import qa_text
from supervised_sae.lm.load import FACTS_READ_FILE, pad_batch

log = logging.getLogger(__name__)


def training_texts(bios: pd.DataFrame, prompts: pd.DataFrame) -> list[str]:
    """All biographies plus the QA pairs of train people on seen templates."""
    seen = prompts[(prompts["split"] == "train") & (~prompts["template_heldout"].astype(bool))]
    qa = [qa_text(p, a) for p, a in zip(seen["prompt"], seen["answer"], strict=True)]
    return list(bios["text"]) + qa


def texts_sha256(texts: Sequence[str], *extra: str) -> str:
    """Identity of the training texts (and of anything else that shapes the tokens)."""
    return hashlib.sha256("\n".join([*texts, "", *extra]).encode()).hexdigest()


def facts_read(bios: pd.DataFrame, prompts: pd.DataFrame) -> dict[str, int]:
    """Which held-out people's facts the LM reads: the biographies of any person, and
    the QA of train people only. Built-in data gives every person biographies; a user's
    prompts table alone gives none, so the LM never reads a held-out person's facts."""
    held_out = set(prompts.loc[prompts["split"] == "test", "person"])
    read = held_out & set(bios["person"]) if len(bios) else set()
    return {"held_out_people": len(held_out), "held_out_people_read": len(read)}


def write_lm_records(folder: str | Path, history: list[dict[str, Any]], bios: pd.DataFrame,
                     prompts: pd.DataFrame, origin: dict[str, Any]) -> None:
    """What a trained LM folder says of itself beside config.json: its training curve,
    whose facts it read and where it came from (`lm.describe`)."""
    from supervised_sae.lm.describe import ORIGIN_FILE

    write_json(Path(folder) / "training_history.json", history)
    write_json(Path(folder) / FACTS_READ_FILE, facts_read(bios, prompts))
    write_json(Path(folder) / ORIGIN_FILE, origin)


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


@dataclass(frozen=True)
class Schedule:
    """What the loop runs: epochs of batches, AdamW, linear warm-up, cosine decay to 10%."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "warmup_fraction": self.warmup_fraction,
                "seed": self.seed}


def check_length(ids: Sequence[Sequence[int]], limit: int, key: str) -> None:
    longest = max(len(x) for x in ids)
    if longest > limit:
        raise ValueError(f"{key}={limit} is shorter than the longest training text "
                         f"({longest} tokens); raise {key}")


def fit_lm(model: torch.nn.Module, ids: list[list[int]], pad_id: int, store: CheckpointStore,
           schedule: Schedule, device: str,
           after_epoch: Callable[[int], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train `model` on next-token prediction over the token rows `ids`; return the
    per-epoch history. Resumes from the newest good checkpoint in `store` (one an epoch).
    `after_epoch(epoch)` runs after each epoch's steps, before its checkpoint, and adds
    its numbers to that epoch's history entry."""
    s = schedule
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(ids) / s.batch_size)
    total = steps_per_epoch * s.epochs
    warmup = max(1, int(total * s.warmup_fraction))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start_epoch, history = 0, []
    state = store.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        log.info("resumed LM training from %s (epoch %d done)", store.latest_path(), start_epoch)
    log.info("LM: %.2fM parameters; %d texts, %d steps/epoch, device %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(ids), steps_per_epoch, device)
    for epoch in range(start_epoch, s.epochs):
        model.train()
        # per-epoch order and dropout masks, both resume-exact: a pretrained model keeps
        # its config's dropout (GPT-2's 0.1), and unseeded it made two runs of one config
        # differ (validation accuracy 0.15 against 0.30 in the tiny fine-tuning test)
        epoch_seed = s.seed * 1_000_003 + epoch
        rng = random.Random(epoch_seed)
        torch.manual_seed(epoch_seed)
        total_loss = torch.zeros((), device=device)
        bar = tqdm(_batches(ids, s.batch_size, rng, pad_id), total=steps_per_epoch,
                   desc=f"LM epoch {epoch + 1}/{s.epochs}", leave=False, mininterval=2)
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
        model.eval()
        entry = {"epoch": epoch + 1, "loss": mean_loss,
                 **(after_epoch(epoch) if after_epoch else {})}
        history.append(entry)
        log.info("LM epoch %d/%d: %s", epoch + 1, s.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if isinstance(v, float)))
        store.save(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch,
                           "history": history})
    model.eval()
    return history
