"""Hooks on the residual stream at a layer (numbering: `supervised_sae.layers`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from supervised_sae.layers import EMBEDDINGS, EMBEDDINGS_NAME


def hook_residual(blocks: Sequence[Any], layer: int,
                  fn: Callable[[Any], Any | None]) -> Any:
    """Call fn(hidden [batch, seq, d_model]) on the residual stream at `layer`; when it
    returns a tensor, that replaces the stream. Returns the hook's handle (`.remove()`).

    Block L's output is caught by a forward hook on block L; the embedding output by a
    pre-hook on block 0 (its first argument, positional in GPT-2, a keyword in others).
    """
    if layer == EMBEDDINGS:
        def before(_module, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        return blocks[0].register_forward_pre_hook(before, with_kwargs=True)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer}: the model has blocks 0..{len(blocks) - 1} "
                         f"(and {EMBEDDINGS_NAME!r} for the embedding output)")

    def after(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return blocks[layer].register_forward_hook(after)
