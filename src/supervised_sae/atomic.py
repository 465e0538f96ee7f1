"""Write files and folders under a temporary name, then rename: never half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = ".supervised-sae"  # in every folder the project writes whole, naming its kind
# the kinds of folder the project writes whole: one command replaces only its own kind
LM_FOLDER, BEST_EPOCH, SAELENS_EXPORT, PAGE_FIGURES, SLOT_BROWSER, NEURONPEDIA_EXPORT = (
    "language model folder", "fine-tuning's best-epoch folder", "SAELens export",
    "results page's figure folder", "slot browser", "Neuronpedia export")


def refuse_outputs_over_inputs(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """An output that is one of the inputs, a folder holding one, or a path inside an
    input folder (a model folder, a figures folder) would destroy what the command reads:
    refused before any work, naming both. Inputs include those a config key names
    (`data.prompts`, `lm.pretrained`, `results_targets`). New files beside an input file,
    such as metrics.json beside sae_final.pt, are fine."""
    given = {k: Path(v).resolve() for k, v in inputs.items() if v}
    for out_name, out in outputs.items():
        if not out:
            continue
        target = Path(out).resolve()
        for in_name, source in given.items():
            inside = source.is_dir() and target.is_relative_to(source)
            if source == target or source.is_relative_to(target) or inside:
                what = ("is" if source == target else "is inside" if inside else "holds")
                raise ValueError(f"{out_name} {out} {what} the {in_name} {source}: writing "
                                 "there would overwrite or delete it; put one of them "
                                 "elsewhere")


def marker_kind(folder: str | os.PathLike) -> str | None:
    """The kind a project folder's `MARKER` names ("" for a marker from before kinds were
    recorded); None for a folder the project did not write."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    for line in marker.read_text(errors="replace").splitlines():
        if line.startswith("kind: "):
            return line.removeprefix("kind: ").strip()
    return ""


def check_replaceable(path: str | os.PathLike, directory: bool,
                      signature: str | None = None, kind: str | None = None) -> None:
    """Refuse, before any work, to replace an existing folder that is not a project
    folder of the same `kind` (its `MARKER` says which), or an existing file that does not
    hold `signature` (the line the project writes into such files)."""
    path = Path(path)
    if not path.exists():
        return
    found = marker_kind(path) if directory else None
    if directory and found is None:
        raise FileExistsError(f"{path} exists and was not written by supervised-sae (no "
                              f"{MARKER} file in it): refusing to replace it; choose a new "
                              "name, or remove it yourself")
    if directory and found != kind:
        what = f"a {found}" if found else "a folder of an older version (kind not recorded)"
        raise FileExistsError(f"{path} exists and is {what}, not a {kind}: refusing to "
                              "replace it with one; choose a new name, or remove it yourself")
    if not directory and signature is not None:
        try:
            ours = signature in path.read_text(errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise FileExistsError(f"{path} exists and was not written by supervised-sae: "
                                  "refusing to overwrite it; choose a new name, or remove "
                                  "it yourself")


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark a folder as the project's `kind` of folder, so that the command that writes
    that kind may replace it later, and no other."""
    (Path(folder) / MARKER).write_text(f"written by supervised-sae; only a command that "
                                       f"writes a {kind} may replace it\nkind: {kind}\n")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False,
                kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success.

    A folder (`directory=True`) is only ever replaced when this project made it: each
    one it writes carries a `MARKER` file, and an existing folder without one is
    refused before any work, so a wrong --out never deletes someone's folder."""
    final = Path(final)
    if directory and kind is None:
        raise ValueError("atomic_path: a folder is written with its kind (MARKER)")
    check_replaceable(final, directory, kind=kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A job killed with SIGKILL cannot clean up: drop its leftovers for this name first.
    # (One writer per output: Snakemake never runs two jobs for the same file.)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(True)
    tmp = None
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp",
                                        dir=final.parent))
            write_marker(tmp, kind)  # the first write: a full disk fails here
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp",
                                        dir=final.parent)
            os.close(fd)
            tmp = Path(name)
        yield tmp
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as err:
        if tmp is not None and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            tmp.unlink(missing_ok=True)
        failed = _write_failure(final, err)
        if failed is not None:
            raise failed from err
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_space(path: str | os.PathLike) -> str:
    """'N MiB free there' for the disk that holds `path` (or its nearest existing parent)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"


def _write_failure(final: Path, err: BaseException) -> OSError | None:
    """A failed write in one line naming the file: an OSError (full disk, no permission),
    or a library's own error that wraps one (safetensors says 'os error 28')."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:  # h5py's text runs to lines
        code, reason = err.errno, os.strerror(err.errno)
    elif isinstance(err, OSError) and err.errno is not None:
        code, reason = err.errno, err.strerror or str(err)
    elif "No space left on device" in str(err) or "(os error 28)" in str(err):
        code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)
    else:
        return None
    if reason.startswith(f"cannot write {final}"):  # already says it all
        return OSError(code, reason)
    room = f" ({free_space(final)})" if code in DISK_FULL else ""
    return OSError(code, f"cannot write {final}: {reason}{room}")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (no NaN or Infinity, which JSON does not have), written atomically; a
    non-finite number is refused with the file named, before anything is written."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{path}: not written: {err} (a NaN or infinite number in "
                         f"{_non_finite_key(data) or 'the data'})") from err
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def _non_finite_key(data: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite float in nested dicts and lists."""
    if isinstance(data, float) and not math.isfinite(data):
        return prefix or "the value"
    items = (data.items() if isinstance(data, dict)
             else enumerate(data) if isinstance(data, list | tuple) else ())
    for key, value in items:
        found = _non_finite_key(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def write_table(path: str | os.PathLike, table) -> None:
    """Write a pandas DataFrame as CSV or Parquet, chosen by the file's suffix."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically, with a write failure reported as an OSError naming the file.

    PyTorch's zip writer turns a full disk into an opaque RuntimeError; say what it means.
    """
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # its text ("unexpected pos ...") names no cause
            raise OSError(f"cannot write {path}: PyTorch's writer failed; is the disk full? "
                          f"({free_space(path)})") from err
