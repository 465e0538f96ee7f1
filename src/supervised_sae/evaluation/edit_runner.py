"""Edited forward passes at a prompt's last position, each prompt's prefix run once.

Every intervention here changes one position (the prompt's last) at one site, so what
comes before it is the same for every edit and every alpha: the prefix (all tokens but
the last) runs once per prompt with a KV cache, and each edit runs only the last token
against that cache (and, for generation, continues greedily from there). Prompts are
grouped by length, so no batch holds padding and positions need no bookkeeping.

A job is (prompt, edit): `prompt_of[j]` names job j's prompt, and an edit's function
gets the clean vector at the SAE's layer for a batch of jobs and their job indices.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import DynamicCache

from supervised_sae.lm.hooks import hook_residual

# (clean vector at the layer [n, d] (float32), job indices [n]) -> the vector written
EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NO_TOKEN = -1  # in a generation, after its stop token


@dataclass(frozen=True)
class Edit:
    """What one edit writes where. `fn` None: the clean run.

    site "residual": the result replaces the residual stream at the layer (block L's
    output, or the embedding output for `emb`); "input_embedding": it replaces the
    last position's token embedding (GPT-2's `inputs_embeds`, before the position
    embedding is added), computed from the clean vector at the layer, as the published
    AlignSAE swap does. `new_tokens`: greedy tokens to generate (1: the next token).
    """

    fn: EditFn | None
    site: Literal["residual", "input_embedding"] = "residual"
    new_tokens: int = 1


def _kv(output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values of a forward pass's cache."""
    cache = output.cache if "cache" in output else output.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_keyword(model) -> str:
    """The forward keyword of a KV cache: `cache` in transformers >= 5.2x, before
    that `past_key_values` (now deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"


class PrefixCachedRunner:
    """Runs edits of the prompts `encoded` (token id rows) at `layer` of `lm`."""

    def __init__(self, lm, blocks: Sequence[Any], layer: int,
                 encoded: Sequence[Sequence[int]], device: str | torch.device,
                 batch_size: int = 256, stop_id: int | None = None) -> None:
        self.lm, self.blocks, self.layer = lm, blocks, layer
        self.encoded, self.device, self.batch_size = encoded, device, batch_size
        self.stop_id = stop_id
        self.cache_keyword = _cache_keyword(lm.base_model)

    @torch.no_grad()
    def run(self, prompt_of: np.ndarray, edits: Sequence[Edit]) -> list[torch.Tensor]:
        """Per edit, the tokens [jobs, edit.new_tokens] the LM produces for every job
        (NO_TOKEN after a stop token)."""
        prompt_of = np.asarray(prompt_of, dtype=np.int64)
        out = [torch.full((len(prompt_of), e.new_tokens), NO_TOKEN, dtype=torch.long,
                          device=self.device) for e in edits]
        by_length: dict[int, list[int]] = defaultdict(list)
        for prompt in np.unique(prompt_of):
            by_length[len(self.encoded[prompt])].append(int(prompt))
        for length, prompts in sorted(by_length.items()):
            for start in range(0, len(prompts), self.batch_size):
                chunk = np.array(prompts[start:start + self.batch_size])
                self._run_chunk(chunk, length, prompt_of, edits, out)
        return out

    def _run_chunk(self, chunk: np.ndarray, length: int, prompt_of: np.ndarray,
                   edits: Sequence[Edit], out: list[torch.Tensor]) -> None:
        ids = torch.tensor([self.encoded[p] for p in chunk], device=self.device)
        prefix = None
        if length > 1:
            prefix = _kv(self.lm.base_model(input_ids=ids[:, :-1], use_cache=True))
        local = {int(p): i for i, p in enumerate(chunk)}
        jobs = np.flatnonzero(np.isin(prompt_of, chunk))
        for start in range(0, len(jobs), self.batch_size):
            part = jobs[start:start + self.batch_size]
            rows = torch.tensor([local[int(p)] for p in prompt_of[part]], device=self.device)
            job_index = torch.from_numpy(part).to(self.device)
            clean = None
            for edit, tokens in zip(edits, out, strict=True):
                if edit.site == "input_embedding" and clean is None:
                    clean = self._clean_at_layer(ids[rows, -1:], prefix, rows)
                tokens[job_index] = self._generate(ids[rows, -1:], prefix, rows, edit,
                                                   job_index, clean)

    def _cache(self, prefix, rows: torch.Tensor) -> DynamicCache | None:
        if prefix is None:
            return None
        return DynamicCache([(k[rows], v[rows]) for k, v in prefix])

    def _clean_at_layer(self, last_ids, prefix, rows) -> torch.Tensor:
        """The clean vector at the layer, at the last position, for these jobs."""
        caught: list[torch.Tensor] = []
        handle = hook_residual(self.blocks, self.layer, lambda h: caught.append(h[:, -1]))
        try:
            self.lm.base_model(input_ids=last_ids, use_cache=True,
                               **{self.cache_keyword: self._cache(prefix, rows)})
        finally:
            handle.remove()
        return caught[0].float()

    def _generate(self, last_ids, prefix, rows, edit: Edit, job_index: torch.Tensor,
                  clean: torch.Tensor | None) -> torch.Tensor:
        cache = self._cache(prefix, rows) or DynamicCache()
        handle = None
        if edit.fn is not None and edit.site == "residual":
            def at_layer(hidden: torch.Tensor) -> torch.Tensor:
                new = edit.fn(hidden[:, -1].float(), job_index).to(hidden.dtype)
                return torch.cat([hidden[:, :-1], new[:, None]], dim=1)
            handle = hook_residual(self.blocks, self.layer, at_layer)
        elif edit.fn is not None:
            written = edit.fn(clean, job_index)

            def embedding(_module, _inputs, output):
                return written[:, None].to(output.dtype)
            handle = self.lm.get_input_embeddings().register_forward_hook(embedding)
        tokens = torch.full((len(rows), edit.new_tokens), NO_TOKEN, dtype=torch.long,
                            device=self.device)
        alive = torch.arange(len(rows), device=self.device)  # rows still generating
        step_ids = last_ids
        try:
            for step in range(edit.new_tokens):
                logits = self.lm(input_ids=step_ids, use_cache=True,
                                 **{self.cache_keyword: cache}).logits[:, -1]
                if handle is not None:  # the edit is at the prompt's last position only
                    handle.remove()
                    handle = None
                token = logits.argmax(-1)
                tokens[alive, step] = token
                going = (token != self.stop_id) if self.stop_id is not None else \
                    torch.ones_like(token, dtype=torch.bool)
                if step + 1 == edit.new_tokens or not going.any():
                    break
                if not going.all():  # finished rows leave the batch and its cache
                    cache.batch_select_indices(going.nonzero()[:, 0])
                    alive, token = alive[going], token[going]
                step_ids = token[:, None]
        finally:
            if handle is not None:
                handle.remove()
        return tokens
