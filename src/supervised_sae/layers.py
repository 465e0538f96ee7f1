"""Layer numbering, and hooks on the residual stream at a layer.

Layer L (0, 1, ...) is the residual stream after transformer block L. Layer -1
(`EMBEDDINGS`, written `emb` in configs, HDF5 keys and labels) is the embedding output,
the input of block 0. Hugging Face's `hidden_states[i]`, which the published AlignSAE
code reads, is this package's layer i - 1: its "layer 0" is our `emb`.

Torch-free at import: the Snakefile uses the numbering.
"""

from __future__ import annotations

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
