"""What an edit is (`Edit`) and what the runner reads from a pass (`Reader`): shared by
the prefix-cached runner and everything that builds edits for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

# (clean vector at the layer [n, d] (float32), job indices [n]) -> the vector written
EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (per edit of the pass, the next-token logits [n, vocab] of the same n jobs; their
# job indices [n]) -> per edit, what to keep per job [n, m]
Reader = Callable[[list[torch.Tensor], torch.Tensor], list[torch.Tensor]]
NO_TOKEN = -1  # in a generation, after its stop token


def greedy_token(parts: list[torch.Tensor], _jobs: torch.Tensor) -> list[torch.Tensor]:
    """The default reader: each edit's greedy next token."""
    return [p.argmax(-1, keepdim=True) for p in parts]


@dataclass(frozen=True)
class Edit:
    """What one edit writes where. `fn` None: the clean run.

    site "residual": the result replaces the residual stream at the layer (block L's
    output, or the embedding output for `emb`); "input_embedding": it replaces the
    last position's token embedding (GPT-2's `inputs_embeds`, before the position
    embedding is added), computed from the clean vector at the layer, as the published
    AlignSAE swap does. `new_tokens`: greedy tokens to generate (1: the next token).
    `forced` [jobs, new_tokens]: teacher forcing instead, each job's gold tokens (-1
    after its last); the run gives each step's negative log-likelihood of the gold
    token (0 after the last) in place of tokens.
    """

    fn: EditFn | None
    site: Literal["residual", "input_embedding"] = "residual"
    new_tokens: int = 1
    forced: torch.Tensor | None = None
