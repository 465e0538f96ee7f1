"""Write files and folders under a temporary name, then rename: never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A job killed with SIGKILL cannot clean up: drop its leftovers for this name first.
    # (One writer per output: Snakemake never runs two jobs for the same file.)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # full disk, no permission
            raise OSError(err.errno, f"cannot write {final}: {err.strerror}") from err
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


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
        except RuntimeError as err:
            free = shutil.disk_usage(Path(path).parent).free
            raise OSError(f"cannot write {path}: {err} (is the disk full? {free / 2**30:.1f} "
                          "GiB free there)") from err
