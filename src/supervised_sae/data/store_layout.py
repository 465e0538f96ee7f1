"""The activation store's layout (HDF5, readable with plain h5py) and its check.

Layout of the file (readable with plain h5py):
  layers/{L}        float [n_prompts, d_model]  output of block L at the prompt's last token
  layers/emb        float [n_prompts, d_model]  the embedding output (input of block 0),
                    the published work's "layer 0" (see supervised_sae.layers)
  relation          int   index into relation_names
  answer            int   index into answer_values: the whole answer (a value)
  answer_token_id   int   the LM's token id of the answer's first token (for read-outs
                          of one token, e.g. the logit lens)
  person, template  int
  split             int   0 train, 1 test, 2 validation (choose SAE epochs; not reported)
  template_heldout  bool
  relation_names, answer_values   strings (answer_values: each value's text)
  value_token_ids, value_token_offsets   int: value k's token ids after a prompt are
                    value_token_ids[offsets[k]:offsets[k + 1]] (values are the distinct
                    answer token sequences, sorted)
  attrs: store_format (2), d_model, n_layers, model_path, dtype, package_version,
  prompts_sha256, lm_sha256;
  each layers/* dataset has attr sha256, the hash of its rows (see activation_file)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from supervised_sae.layers import EMBEDDINGS, layer_name

DTYPES = {"float32": np.float32, "float16": np.float16}
FINGERPRINT_ATTR = "sha256"  # per-layer dataset attribute: hash of its rows, in order
# 1: answers were first tokens (`answer_tokens`); 2: whole answers (values and their ids)
STORE_FORMAT = 2


class ActivationFileError(ValueError):
    """An activation file that does not follow the layout; the message says where."""


LABELS = {"relation": "i", "answer": "i", "answer_token_id": "i", "person": "i",
          "split": "i", "template": "i", "template_heldout": "b"}


def check_activation_file(path: str | Path, layers: Sequence[int] | None = None) -> Path:
    """Check datasets, shapes, dtypes, label ranges and finiteness (in row chunks) of an
    activation file, before any training reads it."""
    open_activation_file(path, layers).close()
    return Path(path)


def open_activation_file(path: str | Path, layers: Sequence[int] | None = None,
                         scan_values: bool = True) -> h5py.File:
    """The activation file opened for reading, its layout checked (the caller closes it);
    `scan_values` False: the layers' values are not read for the finiteness check (a
    caller that reads them whole checks them with `check_finite` instead)."""
    path = Path(path)
    if not path.is_file():
        raise ActivationFileError(f"{path}: activation file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ActivationFileError(f"{path}: not a readable HDF5 file (truncated or another "
                                  f"format?): {err}") from err
    try:
        check_open_activation_file(f, path, layers, scan_values=scan_values)
    except BaseException:
        f.close()
        raise
    return f


def check_open_activation_file(f: h5py.File, path: Path, layers: Sequence[int] | None = None,
                               chunk_rows: int = 65_536, scan_values: bool = True) -> None:
    """The layout check on a file already open (see `check_activation_file`)."""
    stored_format = int(f.attrs.get("store_format", 1))
    if stored_format != STORE_FORMAT:
        raise ActivationFileError(
            f"{path}: activation store format {stored_format}, this version reads format "
            f"{STORE_FORMAT} ({'answers as first tokens only' if stored_format < 2 else 'newer'}"
            "); delete the file and extract again (snakemake --forcerun activations)")
    for key in ("n_layers", "d_model"):
        if key not in f.attrs:
            raise ActivationFileError(f"{path}: attribute {key!r} missing")
    n_layers, d_model = int(f.attrs["n_layers"]), int(f.attrs["d_model"])
    missing = [k for k in [*LABELS, *VALUE_SETS] if k not in f]
    missing += [f"layers/{k}" for k in range(n_layers) if f"layers/{k}" not in f]
    if missing:
        raise ActivationFileError(f"{path}: dataset(s) {missing} missing")
    n = f["relation"].shape[0]
    for key, kind in LABELS.items():
        ds = f[key]
        if ds.shape != (n,) or ds.dtype.kind not in (kind, "u" if kind == "i" else kind):
            raise ActivationFileError(
                f"{path}: dataset {key!r} has shape {ds.shape} and dtype {ds.dtype}; "
                f"expected shape ({n},) and an {'integer' if kind == 'i' else 'bool'} dtype")
    check_values(f, path)
    bounds = {"relation": len(f["relation_names"]), "answer": len(f["answer_values"]),
              "split": 3}
    for key, upper in bounds.items():
        values = f[key][:]
        bad = np.nonzero((values < 0) | (values >= upper))[0]
        if len(bad):
            raise ActivationFileError(
                f"{path}: {key}[{bad[0]}] = {values[bad[0]]} is out of range; expected "
                f"0..{upper - 1}")
        if key == "relation":  # a name without rows would be a slot in every metric
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[key + "_names"]]
            empty = [names[r] for r in np.nonzero(np.bincount(values, minlength=upper) == 0)[0]]
            if empty:
                raise ActivationFileError(
                    f"{path}: relation_names {empty} have no rows; every relation the "
                    "file names needs prompts (or leave it out of data.relations)")
    if layers is None:  # the whole file: every block, and the embeddings if stored
        layers = [*([EMBEDDINGS] if f"layers/{layer_name(EMBEDDINGS)}" in f else []),
                  *range(n_layers)]
    for k in layers:
        if k == EMBEDDINGS and f"layers/{layer_name(k)}" not in f:
            raise ActivationFileError(
                f"{path}: the embedding output (layers/{layer_name(k)}) was asked for, "
                "but the file has none; extract the activations again with this version")
        if not EMBEDDINGS <= k < n_layers:
            raise ActivationFileError(f"{path}: layer {k} requested; the file has layers "
                                      f"0..{n_layers - 1} and {layer_name(EMBEDDINGS)!r}")
        ds = f[f"layers/{layer_name(k)}"]
        if ds.shape != (n, d_model) or ds.dtype.kind != "f":
            raise ActivationFileError(
                f"{path}: layers/{layer_name(k)} has shape {ds.shape} and dtype "
                f"{ds.dtype}; expected ({n}, {d_model}) floats")
        for start in range(0, n, chunk_rows) if scan_values else ():
            check_finite(ds[start : start + chunk_rows], path, k, start)


VALUE_SETS = ("relation_names", "answer_values", "value_token_ids", "value_token_offsets")


def check_values(f: h5py.File, path: Path) -> None:
    """The values' token ids: offsets from 0 to the ids' length, every value non-empty."""
    offsets, n_ids = f["value_token_offsets"][:], f["value_token_ids"].shape[0]
    n_values = len(f["answer_values"])
    if (offsets.shape != (n_values + 1,) or offsets[0] != 0 or offsets[-1] != n_ids
            or (np.diff(offsets) <= 0).any()):
        raise ActivationFileError(
            f"{path}: value_token_offsets must rise strictly from 0 to "
            f"len(value_token_ids) = {n_ids}, one more entry than answer_values "
            f"({n_values}); got {offsets.shape[0]} entries")


def value_classes(answer_ids: Sequence[Sequence[int]]
                  ) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct answers (token sequences, sorted) and each row's index among them."""
    values = sorted({tuple(int(t) for t in a) for a in answer_ids})
    index = {v: k for k, v in enumerate(values)}
    return values, [index[tuple(int(t) for t in a)] for a in answer_ids]


def check_finite(block: np.ndarray, path: str | Path, layer: int, start: int = 0) -> None:
    """An error naming the first row of `block` (rows from `start` of a layer) that
    holds NaN or Inf."""
    bad_rows = np.nonzero(~np.isfinite(block).all(axis=1))[0]
    if len(bad_rows):
        raise ActivationFileError(
            f"{path}: layers/{layer_name(layer)} row {start + int(bad_rows[0])} holds NaN "
            "or Inf; every activation must be finite")
