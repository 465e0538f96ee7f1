"""Process-wide math and memory settings for training, set once per job."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS.

    By default every block above 32 MB is its own mmap, unmapped when freed. A CPU step
    at the seed's shape allocates two 300 MB gradients, so each step page-faults ~0.6 GB
    of fresh zeroed pages: about half of the step's time. With mmap off and trimming
    only above 2 GB, freed blocks stay in the heap and the next step reuses them. (If
    the heap cannot grow, glibc still falls back to mmap.) Returns whether it applied.
    """
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: musl, macOS
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_backend(device: torch.device, tf32: bool = True) -> None:
    """TF32 matmuls on CUDA (when allowed); allocator reuse on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    elif device.type == "cpu" and keep_freed_cpu_memory():
        log.debug("glibc malloc: mmap off, trim threshold 2 GB")
