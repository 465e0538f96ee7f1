"""Whole answers: when the LM "answered v", under any tokenizer.

A value's answer is its token ids after the prompt (under a word tokenizer one token,
a date four; under byte-level BPE most values are several, and many share the first).
The LM answered v when greedy decoding from the prompt reproduces v's tokens in full
and then does not go on into a longer known value ("New York" is not answered by
"New York City"). `AnswerTrie` holds the known values (every relation's, so a swap's
answer is recognised whichever relation it names) and reads a token sequence as the
value it spells, or none.

By construction this equals a teacher-forced check: feed v's tokens after the prompt;
v is answered iff the argmax at every answer position is v's next token and the argmax
after v's last token does not continue a longer value. `AnswerTrie.decode` of those
teacher-forced argmaxes is v exactly then, so one pass over prompt + answer decides it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from supervised_sae.data.store_reader import first_token_unique
from supervised_sae.lm.tokenizer import encode

NO_VALUE = -1  # a token sequence that spells no known value


class AnswerTrie:
    """The known values' token sequences as a trie; value k is `values[k]`. Lookups run
    on tensors (sorted keys node * vocab + token), so a batch of rows steps at once."""

    def __init__(self, values: Sequence[Sequence[int]], device: str | torch.device = "cpu"):
        if not len(values):
            raise ValueError("an answer trie needs at least one value")
        children: dict[tuple[int, int], int] = {}
        value_at, has_children = [NO_VALUE], [False]
        for k, tokens in enumerate(values):
            if not len(tokens):
                raise ValueError(f"answer value {k} has no tokens")
            node = 0
            for token in tokens:
                key = (node, int(token))
                if key not in children:
                    children[key] = len(value_at)
                    value_at.append(NO_VALUE)
                    has_children.append(False)
                has_children[node] = True
                node = children[key]
            if value_at[node] != NO_VALUE:
                raise ValueError(f"answer values {value_at[node]} and {k} have the same "
                                 f"tokens {list(tokens)}")
            value_at[node] = k
        self.vocab = 1 + max(t for _, t in children)
        keys = torch.tensor([n * self.vocab + t for n, t in children], dtype=torch.long)
        order = keys.argsort()
        self.keys = keys[order].to(device)
        self.child = torch.tensor(list(children.values()), dtype=torch.long)[order].to(device)
        self.value_at = torch.tensor(value_at, dtype=torch.long, device=device)
        self.has_children = torch.tensor(has_children, dtype=torch.bool, device=device)
        # greedy tokens that settle every answer: a value's own, and one more after a
        # value that a longer one starts with (does it go on?)
        ends = {k: n for n, k in enumerate(value_at) if k != NO_VALUE}
        self.tokens_to_settle = max(len(v) + has_children[ends[k]]
                                    for k, v in enumerate(values))
        self.values = [tuple(int(t) for t in v) for v in values]

    def step(self, node: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The child of each node along each token; -1 where there is none (a token
        outside the vocabulary, or -1 for "no token", has none)."""
        inside = (token >= 0) & (token < self.vocab) & (node >= 0)
        key = node.clamp_min(0) * self.vocab + token.clamp(0, self.vocab - 1)
        at = torch.searchsorted(self.keys, key).clamp_max(len(self.keys) - 1)
        return torch.where(inside & (self.keys[at] == key), self.child[at], -1)

    def first_step(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From a greedy first token: (the value it already settles, or NO_VALUE; whether
        more tokens are needed to know)."""
        node = self.step(torch.zeros_like(token), token)
        settled = torch.where(node >= 0, self.value_at[node.clamp_min(0)], NO_VALUE)
        more = (node >= 0) & self.has_children[node.clamp_min(0)]
        return torch.where(more, NO_VALUE, settled), more

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The value each row of greedy tokens [n, T] spells: walk from the root while
        the tokens follow the trie; where the walk stops (a token off the trie, or a
        value with no longer value after it) the node's value, NO_VALUE if it is none.
        A row still inside the trie after T tokens takes its node's value."""
        n = tokens.shape[0]
        node = torch.zeros(n, dtype=torch.long, device=tokens.device)
        answer = torch.full((n,), NO_VALUE, dtype=torch.long, device=tokens.device)
        alive = torch.ones(n, dtype=torch.bool, device=tokens.device)
        for s in range(tokens.shape[1]):
            child = self.step(node, tokens[:, s])
            off = alive & (child < 0)
            answer[off] = self.value_at[node[off]]
            alive &= child >= 0
            node = torch.where(alive, child, node)
            leaf = alive & ~self.has_children[node]
            answer[leaf] = self.value_at[node[leaf]]
            alive &= ~leaf
            if not alive.any():
                return answer
        answer[alive] = self.value_at[node[alive]]
        return answer

    def first_token_identifies(self) -> torch.Tensor:
        """Per value: no other value starts with its first token (a read-out of one
        token can name it)."""
        return first_token_unique(self.values).to(self.value_at.device)


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    prompt_ids: list[list[int]] | None = None, first_index: int = 0,
) -> list[list[int]]:
    """Each answer's token ids after its prompt (the text "prompt answer" as the LM
    reads it). `prompt_ids`: the prompts' ids if encoded; `first_index` numbers the
    prompts in error messages when this is a slice."""
    if prompt_ids is None:
        prompt_ids = encode(tokenizer, prompts)
    full_ids = encode(tokenizer, [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)])
    out = []
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if f[: len(p)] != p or len(f) == len(p):
            raise ValueError(
                f"prompt {first_index + i} {prompts[i]!r} with answer {answers[i]!r}: the "
                "answer does not start a new token after the prompt under this tokenizer")
        out.append(f[len(p):])
    return out
