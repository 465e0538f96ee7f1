"""Fine-tune a local pretrained causal LM on the biographies and the train people's QA,
as the published work fine-tunes GPT-2 small: its own tokenizer and architecture, the
epoch kept is the one whose validation people answer best (whole answers).

The pretrained folder is only read; the result is a new `save_pretrained` folder that
records what it was fine-tuned from and on what (`lm_origin.json`, `facts_read.json`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from supervised_sae.atomic import BEST_EPOCH, LM_FOLDER, atomic_path, write_json
from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.lm.fit import (
    Schedule,
    check_length,
    fit_lm,
    texts_sha256,
    training_texts,
    write_lm_records,
)
from supervised_sae.lm.load import lm_sha256, load_lm, whole_answer_correct
from supervised_sae.lm.tokenizer import encode

log = logging.getLogger(__name__)
CHOSEN_ON = "whole-answer accuracy of validation people (seen and held-out wordings)"


def context_length(config: Any) -> int | None:
    """The longest input a model's config admits (None: not stated)."""
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


class BestEpoch:
    """The epoch with the best validation accuracy so far, saved as a model folder in the
    checkpoint folder so a resumed run keeps it; tied to the run's identity."""

    def __init__(self, checkpoint_dir: str | Path, identity: dict[str, Any]):
        self.folder = Path(checkpoint_dir) / "best"
        self.identity = identity

    def record(self) -> dict[str, Any] | None:
        path = self.folder / "best.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("identity") == self.identity else None

    def offer(self, model: torch.nn.Module, epoch: int, accuracy: float) -> None:
        best = self.record()
        if best is not None and best["validation_accuracy"] >= accuracy:
            return
        with atomic_path(self.folder, directory=True, kind=BEST_EPOCH) as tmp:
            model.save_pretrained(tmp)
            write_json(Path(tmp) / "best.json", {"epoch": epoch + 1, "identity": self.identity,
                                                 "validation_accuracy": accuracy})


def finetune_lm(bios: pd.DataFrame, prompts: pd.DataFrame, pretrained_dir: str | Path,
                out_dir: str | Path, checkpoint_dir: str | Path, schedule: Schedule,
                device: str = "cpu", keep_checkpoints: int = 2) -> torch.nn.Module:
    """Fine-tune the model in `pretrained_dir` on every biography and the train people's
    QA for `schedule.epochs` epochs; save the epoch best on validation people (the last
    without any) with its tokenizer to `out_dir`. Resumes from `checkpoint_dir`."""
    pretrained_dir = Path(pretrained_dir).resolve()
    for what, path in (("output", out_dir), ("checkpoint folder", checkpoint_dir)):
        where = Path(path).resolve()
        if where == pretrained_dir or pretrained_dir in where.parents \
                or where in pretrained_dir.parents:
            raise ValueError(f"{path}: the fine-tuned model's {what} would be at, inside or "
                             f"above the pretrained folder {pretrained_dir}, which is only "
                             "read; choose another place")
    model, tokenizer = load_lm(pretrained_dir, device)
    model = model.float()  # AdamW on bf16/fp16 weights loses the small updates
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{pretrained_dir}: the tokenizer has no end-of-text token to end "
                         "each training text with; set eos_token in its tokenizer_config.json")
    texts = training_texts(bios, prompts)
    ids = [x + [tokenizer.eos_token_id] for x in encode(tokenizer, texts)]
    limit = context_length(model.config)
    if limit is not None:
        check_length(ids, limit, f"{pretrained_dir}'s context length (config.json)")
    pretrained_sha256 = lm_sha256(model)
    identity = {"kind": "lm-finetune", "pretrained": str(pretrained_dir),
                "pretrained_sha256": pretrained_sha256, **schedule.identity(),
                "texts_sha256": texts_sha256(texts)}
    store = CheckpointStore(checkpoint_dir, keep=keep_checkpoints, identity=identity)
    validation = prompts[prompts["split"] == "validation"]
    best = BestEpoch(checkpoint_dir, store.identity)

    def after_epoch(epoch: int) -> dict[str, Any]:
        if validation.empty:
            return {}
        whole, _ = whole_answer_correct(model, tokenizer, list(validation["prompt"]),
                                        list(validation["answer"]), device)
        accuracy = float(whole.mean())
        best.offer(model, epoch, accuracy)
        return {"validation_accuracy": accuracy}

    log.info("fine-tuning %s (%s): %d texts (%d biographies, QA of %d train people)",
             pretrained_dir, model.config.model_type, len(texts), len(bios),
             prompts.loc[prompts["split"] == "train", "person"].nunique())
    history = fit_lm(model, ids, tokenizer.pad_token_id, store, schedule, device, after_epoch)
    chosen = best.record()
    if chosen is not None:
        model = type(model).from_pretrained(best.folder, dtype=torch.float32).to(device).eval()
        log.info("kept epoch %d of %d: validation whole-answer accuracy %.3f",
                 chosen["epoch"], schedule.epochs, chosen["validation_accuracy"])
    origin = {"origin": "fine-tuned", "pretrained": str(pretrained_dir),
              "pretrained_sha256": pretrained_sha256, "epochs": schedule.epochs,
              "chosen_epoch": chosen["epoch"] if chosen else schedule.epochs,
              "chosen_on": CHOSEN_ON if chosen else "the last epoch (no validation people)",
              "people": int(prompts["person"].nunique()), "biographies": len(bios),
              "qa_people": int(prompts.loc[prompts["split"] == "train", "person"].nunique())}
    with atomic_path(out_dir, directory=True, kind=LM_FOLDER) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_lm_records(tmp, history, bios, prompts, origin)
    return model
