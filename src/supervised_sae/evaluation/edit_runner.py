"""Edited forward passes at a prompt's last position, each prompt's prefix run once.

Every intervention here changes one position (the prompt's last) at one site, so what
comes before it is the same for every edit and every alpha: the prefix (all tokens but
the last) runs once per prompt with a KV cache, and each edit runs only the last token
against that cache. A prompt's one-token edits run side by side, as parallel queries of
one row that each see only the prefix and themselves (a 4D mask), so the cache is not
copied per edit; generation gives each (edit, job) its own row and continues greedily
from there. Prompts are grouped by length, so no batch holds padding.

A job is (prompt, edit): `prompt_of[j]` names job j's prompt, and an edit's function
gets the clean vector at the SAE's layer for a batch of jobs and their job indices.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from supervised_sae.evaluation.edit_spec import NO_TOKEN, Edit, Reader, greedy_token
from supervised_sae.evaluation.prefix_cache import (
    KeysValues,
    PrefixCache,
    cache_keyword,
    kv_of,
)
from supervised_sae.lm.answers import AnswerTrie
from supervised_sae.lm.hooks import hook_residual


class PrefixCachedRunner:
    """Runs edits of the prompts `encoded` (token id rows) at `layer` of `lm`.

    `batch_size` prompts share a prefix pass; up to `rows_per_pass` (edit, job) queries
    share a last-token pass, several edits packed into one (a one-token pass is cheap,
    and on a small LM its fixed cost dominates). A prompt's prefix keys and values are
    kept for later calls (splicing, swaps, the published walk and entity swaps steer
    the same prompts) up to `prefix_cache_mb`; past it, prefixes run again. `trie`: the
    known values, for `whole_answers.decode_answers`."""

    def __init__(self, lm, blocks: Sequence[Any], layer: int,
                 encoded: Sequence[Sequence[int]], device: str | torch.device,
                 batch_size: int = 256, stop_id: int | None = None,
                 rows_per_pass: int = 2048, prefix_cache_mb: float = 1024,
                 trie: AnswerTrie | None = None) -> None:
        self.lm, self.blocks, self.layer = lm, blocks, layer
        self.trie = trie  # the known values, to read whole answers (`whole_answers`)
        self.encoded, self.device, self.batch_size = encoded, device, batch_size
        self.stop_id, self.rows_per_pass = stop_id, rows_per_pass
        self.cache_keyword = cache_keyword(lm.base_model)
        self._prefixes = PrefixCache(prefix_cache_mb)
        self.prefix_passes = 0  # prompts whose prefix ran (a kept one runs once)

    @torch.no_grad()
    def run(self, prompt_of: np.ndarray, edits: Sequence[Edit], read: Reader | None = None
            ) -> list[torch.Tensor]:
        """Per edit, the tokens [jobs, edit.new_tokens] the LM produces for every job
        (NO_TOKEN after a stop token). With `read` (one-token edits at one site only),
        per edit what `read` keeps from the next-token logits instead [jobs, m]: it sees
        every edit's logits of the same jobs at once (e.g. a KL to the clean run)."""
        prompt_of = np.asarray(prompt_of, dtype=np.int64)
        if read is None:
            out = [torch.full((len(prompt_of), e.new_tokens), NO_TOKEN, dtype=torch.long,
                              device=self.device) if e.forced is None else
                   torch.zeros(len(prompt_of), e.new_tokens, device=self.device)
                   for e in edits]
        elif any(e.new_tokens != 1 or e.site != edits[0].site for e in edits):
            raise ValueError("a reader reads one-token edits at one site")
        else:
            out = [None] * len(edits)  # sized by the reader's first answer
        by_length: dict[int, list[int]] = defaultdict(list)
        for prompt in np.unique(prompt_of):
            by_length[len(self.encoded[prompt])].append(int(prompt))
        for length, prompts in sorted(by_length.items()):
            for start in range(0, len(prompts), self.batch_size):
                chunk = np.array(prompts[start:start + self.batch_size])
                self._run_chunk(chunk, length, prompt_of, edits, out, read or greedy_token)
        return out

    def _run_chunk(self, chunk: np.ndarray, length: int, prompt_of: np.ndarray,
                   edits: Sequence[Edit], out: list, read: Reader) -> None:
        ids = torch.tensor([self.encoded[p] for p in chunk], device=self.device)
        prefix = self._prefix(ids, chunk) if length > 1 else None
        local = {int(p): i for i, p in enumerate(chunk)}
        jobs = np.flatnonzero(np.isin(prompt_of, chunk))
        prompt_row = torch.tensor([local[int(p)] for p in prompt_of[jobs]], device=self.device)
        clean = None  # the clean vector at the layer per job, for input-embedding edits
        if any(e.site == "input_embedding" for e in edits):
            step = self.rows_per_pass
            clean = torch.cat([self._clean_at_layer(ids, prefix, prompt_row[i:i + step])
                               for i in range(0, len(jobs), step)])
        groups: dict[tuple[str, int, bool], list[int]] = defaultdict(list)
        for k, e in enumerate(edits):  # edits that can share a pass
            groups[(e.site, e.new_tokens, e.forced is not None)].append(k)
        for (site, new_tokens, forced), members in groups.items():
            if new_tokens == 1 and not forced:
                self._side_by_side(ids, prefix, jobs, prompt_row, members, edits, clean, site,
                                   out, read, len(prompt_of))
                continue
            edit_of = np.repeat(members, len(jobs))  # (edit, job) rows, edit by edit
            job_of = np.tile(np.arange(len(jobs)), len(members))
            for i in range(0, len(edit_of), self.rows_per_pass):
                e_part = edit_of[i:i + self.rows_per_pass]
                j_part = job_of[i:i + self.rows_per_pass]
                rows = prompt_row[torch.from_numpy(j_part).to(self.device)]
                segments = [(int(e), torch.from_numpy(jobs[j_part[e_part == e]])
                             .to(self.device)) for e in np.unique(e_part)]
                written = self._writer(edits, segments, clean, j_part, site)
                gold = torch.cat([edits[e].forced[j] for e, j in segments]) if forced else None
                tokens = self._generate(ids[rows, -1:], prefix, rows, site, written, new_tokens,
                                        gold)
                at = 0
                for e, job_index in segments:
                    out[e][job_index] = tokens[at:at + len(job_index)]
                    at += len(job_index)

    def _side_by_side(self, ids, prefix, jobs: np.ndarray, prompt_row: torch.Tensor,
                      members: list[int], edits: Sequence[Edit], clean, site: str,
                      out: list, read: Reader, n_jobs: int) -> None:
        """The next token of every (edit, job): a prompt's edits run side by side as
        queries of one row, each at the last position's index and seeing only the cached
        prefix and itself (a 4D mask), so the prefix's keys and values are not copied
        per edit. The same attention as one row per edit."""
        rows_of = prompt_row.cpu().numpy()
        per_row = [np.flatnonzero(rows_of == r) for r in range(len(ids))]
        width = len(members) * max(len(p) for p in per_row)
        prefix_len = ids.shape[1] - 1
        step = max(1, self.rows_per_pass // width)
        for start in range(0, len(ids), step):
            block = np.arange(start, min(start + step, len(ids)))
            # (edit, row in the block, column, job position), then sorted edit by edit
            entries = sorted((e, b, c, jp) for b, r in enumerate(block)
                             for c, (e, jp) in enumerate((e, jp) for e in members
                                                         for jp in per_row[r]))
            e_of, b_of, c_of, jp_of = (np.array(x) for x in zip(*entries, strict=True))
            segments = [(int(e), torch.from_numpy(jobs[jp_of[e_of == e]]).to(self.device))
                        for e in np.unique(e_of)]
            written = self._writer(edits, segments, clean, jp_of, site)
            at_b = torch.from_numpy(b_of).to(self.device)
            at_c = torch.from_numpy(c_of).to(self.device)
            dtype = self.lm.get_input_embeddings().weight.dtype
            mask = torch.full((len(block), 1, width, prefix_len + width),
                              torch.finfo(dtype).min, dtype=dtype, device=self.device)
            mask[..., :prefix_len] = 0
            diagonal = torch.arange(width, device=self.device)
            mask[:, 0, diagonal, prefix_len + diagonal] = 0

            def place(hidden: torch.Tensor, written=written, at_b=at_b, at_c=at_c
                      ) -> torch.Tensor:
                new = hidden.clone()
                new[at_b, at_c] = written(hidden[at_b, at_c]).to(hidden.dtype)
                return new
            handle = None if written is None else self._hook(site, place)
            block_rows = torch.from_numpy(block).to(self.device)
            try:
                logits = self.lm(
                    input_ids=ids[block_rows, -1:].expand(len(block), width),
                    position_ids=torch.full((len(block), width), prefix_len,
                                            device=self.device),
                    attention_mask=mask, use_cache=True,
                    **{self.cache_keyword: self._cache(prefix, block_rows)}).logits
            finally:
                if handle is not None:
                    handle.remove()
            # rows edit by edit; every edit of a pass covers the same jobs in one order
            sizes = [len(job_index) for _, job_index in segments]
            kept = read(list(logits[at_b, at_c].split(sizes)), segments[0][1])
            for (e, job_index), values in zip(segments, kept, strict=True):
                if out[e] is None:
                    out[e] = values.new_zeros(n_jobs, values.shape[1])
                out[e][job_index] = values

    def _prefix(self, ids: torch.Tensor, chunk: np.ndarray) -> list[KeysValues]:
        """Each layer's prefix keys and values of the chunk's prompts."""
        def run(rows: list[int]) -> list[KeysValues]:
            self.prefix_passes += len(rows)
            at = torch.tensor(rows, device=self.device)
            return kv_of(self.lm.base_model(input_ids=ids[at, :-1], use_cache=True))
        return self._prefixes.of(chunk, run)

    def _writer(self, edits: Sequence[Edit], segments, clean: torch.Tensor | None,
                j_part: np.ndarray, site: str
                ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The function from the pass's clean vectors (rows edit by edit) to the written
        ones; None when every edit in the pass is the clean run."""
        if all(edits[e].fn is None for e, _ in segments):
            return None

        def write(h: torch.Tensor) -> torch.Tensor:
            pieces, at = [], 0
            for e, job_index in segments:
                part = h[at:at + len(job_index)]
                fn = edits[e].fn
                pieces.append(part if fn is None else fn(part.float(), job_index).to(h.dtype))
                at += len(job_index)
            return torch.cat(pieces)

        if site == "input_embedding":
            assert clean is not None
            source = clean[torch.from_numpy(j_part).to(clean.device)]
            fixed = write(source)
            return lambda _h: fixed
        return write

    def _hook(self, site: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """fn(hidden) replaces the residual stream at the layer, or the input embedding."""
        if site == "residual":
            return hook_residual(self.blocks, self.layer, fn)
        return self.lm.get_input_embeddings().register_forward_hook(
            lambda _module, _inputs, output: fn(output))

    def _cache(self, prefix, rows: torch.Tensor) -> DynamicCache:
        if prefix is None:
            return DynamicCache()
        return DynamicCache([(k[rows], v[rows]) for k, v in prefix])

    def _clean_at_layer(self, ids, prefix, rows) -> torch.Tensor:
        """The clean vector at the layer, at the last position, for these prompt rows."""
        caught: list[torch.Tensor] = []
        handle = hook_residual(self.blocks, self.layer, lambda h: caught.append(h[:, -1]))
        try:
            self.lm.base_model(input_ids=ids[rows, -1:], use_cache=True,
                               **{self.cache_keyword: self._cache(prefix, rows)})
        finally:
            handle.remove()
        return caught[0].float()

    def _generate(self, last_ids, prefix, rows, site: str,
                  written: Callable[[torch.Tensor], torch.Tensor] | None,
                  new_tokens: int, forced: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy tokens [rows, new_tokens]; with `forced` (gold tokens per row, -1 after
        the last) each step's NLL of the gold token, the gold token fed on."""
        cache = self._cache(prefix, rows)
        handle = None
        if written is not None:
            def at_last(hidden: torch.Tensor) -> torch.Tensor:
                last = written(hidden[:, -1]).to(hidden.dtype)
                return torch.cat([hidden[:, :-1], last[:, None]], dim=1)
            handle = self._hook(site, at_last)
        tokens = (torch.full((len(rows), new_tokens), NO_TOKEN, dtype=torch.long,
                             device=self.device) if forced is None else
                  torch.zeros(len(rows), new_tokens, device=self.device))
        alive = torch.arange(len(rows), device=self.device)  # rows still generating
        step_ids = last_ids
        try:
            for step in range(new_tokens):
                logits = self.lm(input_ids=step_ids, use_cache=True,
                                 **{self.cache_keyword: cache}).logits[:, -1]
                if handle is not None:  # the edit is at the prompt's last position only
                    handle.remove()
                    handle = None
                if forced is None:
                    token = logits.argmax(-1)
                    tokens[alive, step] = token
                    going = (token != self.stop_id) if self.stop_id is not None else \
                        torch.ones_like(token, dtype=torch.bool)
                else:
                    token = forced[alive, step]
                    log_p = torch.log_softmax(logits.float(), -1)
                    tokens[alive, step] = -log_p.gather(1, token.clamp_min(0)[:, None])[:, 0]
                    going = (forced[alive, step + 1] >= 0 if step + 1 < new_tokens
                             else token < 0)
                if step + 1 == new_tokens or not going.any():
                    break
                if not going.all():  # finished rows leave the batch and its cache
                    cache.batch_select_indices(going.nonzero()[:, 0])
                    alive, token = alive[going], token[going]
                step_ids = token[:, None]
        finally:
            if handle is not None:
                handle.remove()
        return tokens
