"""Prompt prefixes' keys and values, kept across the edit runner's calls: splicing,
swaps, the published walk and entity swaps steer the same prompts again and again, and
a prompt's prefix is the same for every edit, so it runs once per evaluation job."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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


class RoomyLayer(DynamicLayer):
    """One layer's cache that writes each new token into room set aside when it is made,
    instead of concatenating (which copies the whole cache at every step of every
    generation). Past its room it grows by concatenation, as a DynamicLayer does."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        b, h, n, d = keys.shape
        self._k = keys.new_empty(b, h, n + room, d)
        self._v = values.new_empty(b, h, n + room, values.shape[-1])
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self.length, self.device, self.is_initialized = n, keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:  # out of room: grow as a DynamicLayer would
            self._k = torch.cat([self._k[:, :, : self.length], key_states], dim=-2)
            self._v = torch.cat([self._v[:, :, : self.length], value_states], dim=-2)
        else:
            self._k[:, :, self.length : end] = key_states
            self._v[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._expose()


def roomy_cache(prefix: Sequence[KeysValues] | None, rows: torch.Tensor, room: int
                ) -> DynamicCache:
    """A cache holding these rows' prefix keys and values, with room for `room` more
    tokens per layer (an empty cache when there is no prefix)."""
    cache = DynamicCache()
    if prefix is not None:
        cache.layers = [RoomyLayer(k[rows], v[rows], room) for k, v in prefix]
    return cache
