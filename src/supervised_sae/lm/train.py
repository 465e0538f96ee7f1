"""Train a GPT-2 language model on biographies + QA, and measure its answer accuracy."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from supervised_sae.atomic import atomic_path, write_json
from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.data.biographies import qa_text
from supervised_sae.lm.fast_gelu import use_fast_tanh_gelu
from supervised_sae.lm.tokenizer import answer_first_tokens, build_word_tokenizer, encode
from supervised_sae.sae.model import Readout

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
) -> GPT2LMHeadModel:
    """Train tokenizer and GPT-2 from scratch; save both with save_pretrained to out_dir.

    Resumes from the newest good checkpoint in checkpoint_dir (saved each epoch).
    """
    texts = training_texts(bios, prompts)
    tokenizer = build_word_tokenizer(texts, attribute_values)
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
        "vocab_size": len(tokenizer), "texts_sha256": texts_sha256.hexdigest(), "seed": seed})
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
    return model


def load_lm(model_dir: str | Path, device: str = "cpu"):
    """A local Hugging Face causal LM and its tokenizer, ready for inference."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    # transformers builds an empty tokenizer when a folder has no tokenizer files at all
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((model_dir / name).exists() for name in names):
        raise ValueError(f"{model_dir}: no tokenizer files (expected one of {list(names)}); "
                         "save the tokenizer with save_pretrained into the model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # transformers raises several types for a broken tokenizer
        raise ValueError(f"{model_dir}: tokenizer files do not load: {err}") from err
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(model_dir,
                                                              output_loading_info=True)
    except Exception as err:  # a broken file raises the weight library's own types
        raise ValueError(f"{model_dir}: cannot load as a causal language model "
                         f"(AutoModelForCausalLM): {err}") from err
    # weights that config.json does not account for, or that it expects and are absent
    # (e.g. it claims more layers than were saved), would give another model silently
    missing, unexpected = loading.get("missing_keys", []), loading.get("unexpected_keys", [])
    if missing or unexpected:
        parts = [f"{len(keys)} {what} tensors (e.g. {sorted(keys)[:2]})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"{model_dir}: the weights do not match config.json: "
                         f"{' and '.join(parts)}; does config.json give the number "
                         "of layers and the sizes the weights were saved with?")
    model = model.to(device).eval()
    # GPT-2's tanh GELU in a faster form with the same values (see fast_gelu): as the
    # composite `gelu_new` it was a third of a CPU forward pass, as PyTorch's kernel a fifth
    use_fast_tanh_gelu(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token rows; return ids, attention mask and each row's last index."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if len(rows) == 0 or lengths.min() == 0:
        raise ValueError("pad_batch: every row needs at least one token")
    mask = np.arange(lengths.max()) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    # one flat copy instead of a tensor per row (that loop was ~5% of extraction)
    ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                            count=int(lengths.sum()))
    return (torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)),
            torch.from_numpy(lengths - 1))


@torch.no_grad()
def next_token_ids(model, encoded: Sequence[Sequence[int]], pad_id: int,
                   device: str | torch.device = "cpu", batch_size: int = 256,
                   before_batch: Callable[[torch.Tensor, slice], None] | None = None
                   ) -> torch.Tensor:
    """Greedy next token after each row of token ids (one forward pass per batch).

    before_batch(last, rows) is told each batch's last-token positions and row range,
    for hooks that edit activations there.

    The LM head runs on the last positions only: logits at every position cost a
    quarter of the quickstart LM's forward pass, and for a 50k vocabulary ~1.5 GB a batch.
    (Heads that rescale or soft-cap logits after this layer keep the argmax.)
    """
    head = model.get_output_embeddings()
    preds = []
    for start in range(0, len(encoded), batch_size):
        ids, mask, last = pad_batch(list(encoded[start : start + batch_size]), pad_id)
        last = last.to(device)
        if before_batch is not None:
            before_batch(last, slice(start, start + len(last)))
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                  "use_cache": False}
        at_last = torch.arange(len(last), device=device), last
        if head is None:
            logits = model(**inputs).logits[at_last]
        else:
            logits = head(model.base_model(**inputs).last_hidden_state[at_last])
        preds.append(logits.argmax(-1))
    return torch.cat(preds)


def next_token_predictions(model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                           device: str | torch.device = "cpu") -> torch.Tensor:
    """Greedy next token after each prompt."""
    return next_token_ids(model, encode(tokenizer, prompts), tokenizer.pad_token_id,
                          device).cpu()


def answer_accuracy(model, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame,
                    device: str = "cpu") -> dict[str, Any]:
    """First-answer-token accuracy per person split x template kind, overall and per relation."""
    targets = torch.tensor(answer_first_tokens(tokenizer, list(prompts["prompt"]),
                                               list(prompts["answer"])))
    correct = (next_token_predictions(model, tokenizer, list(prompts["prompt"]),
                                      device=device) == targets).numpy()
    table = prompts.assign(correct=correct)
    result: dict[str, Any] = {}
    for split in ("train", "test"):
        for heldout, kind in ((False, "seen_templates"), (True, "heldout_templates")):
            part = table[(table["split"] == split) & (table["template_heldout"] == heldout)]
            if part.empty:
                continue
            result[f"{split}_{kind}"] = {
                "accuracy": float(part["correct"].mean()),
                "n": int(len(part)),
                "per_relation": {r: float(g["correct"].mean())
                                 for r, g in part.groupby("relation", sort=False)},
            }
    return result


# where the final norm sits in the block layouts extraction supports
FINAL_NORMS = ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm",
               "model.decoder.final_layer_norm")


def _attribute(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def final_readout(model, answer_token_ids: Sequence[int], where: str | Path = "the model"
                  ) -> Readout:
    """The LM's final norm and its output embeddings of the answer tokens (frozen
    copies): residual stream -> answer logits, as the LM computes them after its last
    block. Errors name `where` when the layout is not one we know."""
    norm = next((m for p in FINAL_NORMS if (m := _attribute(model, p)) is not None), None)
    head = model.get_output_embeddings()
    if norm is None or head is None or getattr(norm, "weight", None) is None:
        raise ValueError(f"{where}: cannot find the final norm and output embeddings "
                         f"(looked for {', '.join(FINAL_NORMS)} and get_output_embeddings()); "
                         "the lens value head and the logit lens need both")
    if _attribute(model, "model.decoder.project_out") is not None:
        raise ValueError(f"{where}: OPT with project_out is not supported by the logit lens")
    weight = norm.weight.detach().float().cpu()
    if isinstance(norm, torch.nn.LayerNorm):
        kind, eps = "layer", norm.eps
        bias = norm.bias.detach().float().cpu() if norm.bias is not None else torch.zeros_like(
            weight)
    else:  # Llama-style RMSNorm: weight only
        kind, bias = "rms", torch.zeros_like(weight)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    ids = torch.as_tensor(list(answer_token_ids), dtype=torch.long)
    unembed = head.weight.detach().float().cpu()[ids].clone()
    head_bias = getattr(head, "bias", None)
    unembed_bias = (head_bias.detach().float().cpu()[ids].clone() if head_bias is not None
                    else torch.zeros(len(ids)))
    return Readout(kind, float(eps), weight, bias, unembed, unembed_bias)


def load_readout(model_dir: str | Path, answer_token_ids: Sequence[int]) -> Readout:
    """`final_readout` of a local model folder, on the CPU."""
    model, _ = load_lm(model_dir, "cpu")
    return final_readout(model, answer_token_ids, model_dir)
