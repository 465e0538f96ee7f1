"""Layer numbering, and hooks on the residual stream at a layer.

Layer L (0, 1, ...) is the residual stream after transformer block L. Layer -1
(`EMBEDDINGS`, written `emb` in configs, HDF5 keys and labels) is the embedding output,
the input of block 0. Hugging Face's `hidden_states[i]`, which the published AlignSAE
code reads, is this package's layer i - 1: its "layer 0" is our `emb`.

Torch-free at import: the Snakefile uses the numbering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

EMBEDDINGS = -1
EMBEDDINGS_NAME = "emb"


def parse_layer(value: int | str) -> int:
    """A layer as the config, a path or a command line writes it: 3, "3", -1 or "emb"."""
    if isinstance(value, str) and value.strip() == EMBEDDINGS_NAME:
        return EMBEDDINGS
    try:
        layer = int(value)
    except (TypeError, ValueError):
        layer = EMBEDDINGS - 1  # not a number: refused below with the same message
    if layer < EMBEDDINGS:
        raise ValueError(f"layer {value!r}: expected a block index (0, 1, ...) or "
                         f"{EMBEDDINGS_NAME!r} (-1) for the embedding output")
    return layer


def layer_name(layer: int) -> str:
    """"emb" for the embedding output, else the block index: HDF5 keys and labels."""
    return EMBEDDINGS_NAME if layer == EMBEDDINGS else str(layer)


def hidden_states_index(layer: int) -> int:
    """The index of this layer in Hugging Face's `output_hidden_states` tuple."""
    return layer + 1


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
