"""Prompt prefixes' keys and values, kept across the edit runner's calls: splicing,
swaps, the published walk and entity swaps steer the same prompts again and again, and
a prompt's prefix is the same for every edit, so it runs once per evaluation job."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

KeysValues = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values


def kv_of(output: Any) -> list[KeysValues]:
    """Each layer's keys and values of a forward pass's cache."""
    cache = output.cache if "cache" in output else output.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_keyword(model) -> str:
    """The forward keyword of a KV cache: `cache` in transformers >= 5.2x, before
    that `past_key_values` (now deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"


class PrefixCache:
    """Per prompt, every layer's prefix keys and values, kept up to `budget_mb`; past
    it, prefixes are computed again when asked for."""

    def __init__(self, budget_mb: float):
        self._kept: dict[int, list[KeysValues]] = {}
        self._bytes_left = int(budget_mb * 2**20)

    def of(self, prompts: np.ndarray, run: Callable[[list[int]], Sequence[KeysValues]]
           ) -> list[KeysValues]:
        """Each layer's keys and values [prompts, ...] of these prompts (all of one
        length): the kept ones, and `run(positions)` for the rest (positions in
        `prompts`), kept while the budget lasts."""
        missing = [i for i, p in enumerate(prompts) if int(p) not in self._kept]
        fresh = list(run(missing)) if missing else []
        if fresh:
            size = sum(k.nbytes + v.nbytes for k, v in fresh)
            if size <= self._bytes_left:
                self._bytes_left -= size
                for j, i in enumerate(missing):
                    self._kept[int(prompts[i])] = [(k[j], v[j]) for k, v in fresh]
            if len(missing) == len(prompts):
                return fresh
        where = {i: j for j, i in enumerate(missing)}
        per_prompt = [self._kept[int(p)] if i not in where
                      else [(k[where[i]], v[where[i]]) for k, v in fresh]
                      for i, p in enumerate(prompts)]
        return [(torch.stack([kv[n][0] for kv in per_prompt]),
                 torch.stack([kv[n][1] for kv in per_prompt]))
                for n in range(len(per_prompt[0]))]
