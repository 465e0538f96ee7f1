"""Load a local Hugging Face causal LM and run it: greedy next tokens, whole-answer
accuracy."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from supervised_sae.checkpoints import tensors_sha256
from supervised_sae.data.store_layout import value_classes
from supervised_sae.lm.answers import AnswerTrie, answer_token_ids
from supervised_sae.lm.fast_gelu import use_fast_tanh_gelu
from supervised_sae.lm.readout import Readout, check_final_readout, final_readout
from supervised_sae.lm.tokenizer import encode


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
    # a family we cannot read is refused here, by name: unknown, or read wrongly
    check_final_readout(model, model_dir)
    model = model.to(device).eval()
    # GPT-2's tanh GELU in a faster form with the same values (see fast_gelu): as the
    # composite `gelu_new` it was a third of a CPU forward pass, as PyTorch's kernel a fifth
    use_fast_tanh_gelu(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lm_sha256(model) -> str:
    """The LM's identity: a content hash of its weights, in name order. Extraction records
    it in the activation file; whatever later pairs that LM with those activations
    (evaluation, the lens head, the logit lens) compares it."""
    return tensors_sha256([t for _, t in sorted(model.state_dict().items())])


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


FACTS_READ_FILE = "facts_read.json"  # written by lm.train beside config.json


def held_out_facts(model_dir: str | Path) -> dict[str, Any]:
    """Whether the LM read held-out people's facts, for accuracy.json and the page:
    True or False for an LM trained here, None (unknown) for a pretrained one."""
    path = Path(model_dir) / FACTS_READ_FILE
    if not path.exists():
        return {"held_out_facts_read": None,
                "held_out_note": f"{model_dir} has no {FACTS_READ_FILE} (a model not trained "
                                 "by this project): what it read is not known here"}
    facts = json.loads(path.read_text())
    if facts["held_out_people_read"]:
        return {"held_out_facts_read": True,
                "held_out_note": f"the LM read the biographies of "
                                 f"{facts['held_out_people_read']} of "
                                 f"{facts['held_out_people']} held-out people (never their QA)"}
    return {"held_out_facts_read": False,
            "held_out_note": "the LM never read held-out people's facts (your own prompts "
                             "without lm.pretrained: it trained on train people's QA only), "
                             "so its answers and value accuracy on held-out people measure "
                             "nothing; binding and slot accuracy still do"}


@torch.no_grad()
def teacher_forced_argmax(model, prompts: Sequence[Sequence[int]],
                          answers: Sequence[Sequence[int]], pad_id: int,
                          device: str | torch.device = "cpu", batch_size: int = 256
                          ) -> list[torch.Tensor]:
    """Per row, the greedy token at each answer position given the gold tokens before
    it, and at the position after the answer: len(answer) + 1 tokens, from one forward
    pass over prompt + answer (the LM head on those positions only)."""
    head = model.get_output_embeddings()
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        part = range(start, min(start + batch_size, len(prompts)))
        ids, mask, _ = pad_batch([[*prompts[i], *answers[i]] for i in part], pad_id)
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  use_cache=False).last_hidden_state
        # the head on every row's answer positions at once, one transfer per batch
        rows = [(row, len(prompts[i]) - 1, len(answers[i]) + 1) for row, i in enumerate(part)]
        at_row = torch.tensor([r for r, _, n in rows for _ in range(n)], device=device)
        at_pos = torch.tensor([p + k for _, p, n in rows for k in range(n)], device=device)
        tokens = head(hidden[at_row, at_pos]).argmax(-1).cpu()
        out += list(tokens.split([n for *_, n in rows]))
    return out


def whole_answer_correct(model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                         answers: Sequence[str], device: str | torch.device = "cpu"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, whether the LM answers the whole value (teacher-forced; see
    `lm.answers`), and whether its first token is right. The known values are these
    answers, so a longer value that starts with another counts against it."""
    prompt_ids = encode(tokenizer, prompts)
    gold = answer_token_ids(tokenizer, prompts, answers, prompt_ids=prompt_ids)
    values, index = value_classes(gold)
    argmax = teacher_forced_argmax(model, prompt_ids, gold, tokenizer.pad_token_id, device)
    padded = pad_sequence(argmax, batch_first=True, padding_value=-1)
    whole = (AnswerTrie(values).decode(padded) == torch.tensor(index)).numpy()
    first = np.array([int(a[0]) == g[0] for a, g in zip(argmax, gold, strict=True)])
    return whole, first


def answer_accuracy(model, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame,
                    device: str = "cpu") -> dict[str, Any]:
    """Whole-answer accuracy per person split x template kind, overall and per
    relation, and beside it the first token's (what a one-token check would claim);
    validation people's slices are what LM settings are chosen on."""
    whole, first = whole_answer_correct(model, tokenizer, list(prompts["prompt"]),
                                        list(prompts["answer"]), device)
    table = prompts.assign(correct=whole, first=first)
    result: dict[str, Any] = {}
    for split in ("train", "validation", "test"):
        for heldout, kind in ((False, "seen_templates"), (True, "heldout_templates")):
            part = table[(table["split"] == split) & (table["template_heldout"] == heldout)]
            if part.empty:
                continue
            groups = part.groupby("relation", sort=False)
            result[f"{split}_{kind}"] = {
                "accuracy": float(part["correct"].mean()),
                "first_token_accuracy": float(part["first"].mean()),
                "n": int(len(part)),
                "per_relation": {r: float(g["correct"].mean()) for r, g in groups},
                "per_relation_first_token": {r: float(g["first"].mean()) for r, g in groups},
            }
    return result


def load_readout(model_dir: str | Path, data: Any) -> Readout:
    """`final_readout` of a local model folder for the answers of `data` (a layer of the
    activation store), on the CPU, after checking that this LM made those activations."""
    from supervised_sae.data.cross_checks import check_lm_made_activations

    model, _ = load_lm(model_dir, "cpu")
    check_lm_made_activations(model_dir, lm_sha256(model), data.source, data.lm_sha256)
    return final_readout(model, data.answer_vocab_ids(), model_dir)
