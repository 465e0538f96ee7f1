"""The value the LM answers after each edit: greedy decoding read through the known
values' trie (`lm.answers`), run through the prefix-cached runner.

The first token of every (edit, job) comes from the runner's one-token passes (a
prompt's edits side by side on its cached prefix). Most answers are settled there: a
token off the trie, or a value nothing longer starts with (under the word tokenizer
every value but a date). Only the rest (a date's month, BPE's "University") generate on,
all edits of a site in one run of one composite edit, for as many tokens as settle every
value (its own, and one more where a longer value starts with it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit, EditFn


def composite_edit(edits: Sequence[Edit], edit_of: torch.Tensor, job_of: torch.Tensor
                   ) -> EditFn:
    """One edit over entries (edit index, job) of several edits: entry e is edited as
    `edits[edit_of[e]]` edits its job `job_of[e]` (None: left clean)."""
    def edit(h: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        out, which = h.clone(), edit_of[entries]
        for k in torch.unique(which).tolist():
            fn = edits[k].fn
            if fn is not None:
                mine = which == k
                out[mine] = fn(h[mine], job_of[entries[mine]])
        return out
    return edit


def decode_answers(runner: PrefixCachedRunner, prompt_of: np.ndarray,
                   edits: Sequence[Edit], first: list[torch.Tensor] | None = None
                   ) -> list[torch.Tensor]:
    """Per edit, the value index [jobs] the LM answers (NO_VALUE: none of the known
    values, `runner.trie`) after each job's edit. Edits generate from the prompt's last
    position, at their site; their `new_tokens` is ignored. `first`: each edit's greedy
    first tokens [jobs, 1] when a pass of the caller's already read them."""
    trie = runner.trie
    if trie is None:
        raise ValueError("whole answers need the runner's known values (trie=...)")
    prompt_of = np.asarray(prompt_of, dtype=np.int64)
    if first is None:
        first = runner.run(prompt_of, [Edit(e.fn, e.site) for e in edits])
    answers, unsettled = [], []
    for tokens in first:
        value, more = trie.first_step(tokens[:, 0])
        answers.append(value)
        unsettled.append(more.nonzero()[:, 0])
    for site in {e.site for e in edits}:
        mine = [k for k, e in enumerate(edits) if e.site == site and len(unsettled[k])]
        if not mine:
            continue
        job_of = torch.cat([unsettled[k] for k in mine])
        edit_of = torch.cat([torch.full_like(unsettled[k], k) for k in mine])
        fn = composite_edit(edits, edit_of, job_of)
        tokens = runner.run(prompt_of[job_of.cpu().numpy()],
                            [Edit(fn, site, trie.tokens_to_settle)])[0]
        value = trie.decode(tokens)
        for k in mine:
            answers[k][job_of[edit_of == k]] = value[edit_of == k]
    return answers
