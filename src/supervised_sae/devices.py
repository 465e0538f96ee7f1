"""Pick the device a training job runs on.

Snakemake only counts `gpu` resources; it never says which GPU. So on one machine each
job takes an exclusive fcntl.flock on one device from the configured list, preferring
its layer group's home device (with 3 devices and 12 layers: 0-3, 4-7, 8-11), else any
free one, and waits when all are busy. The kernel drops the lock when the process ends,
however it ends. The choice is made before CUDA is initialised, by setting
CUDA_VISIBLE_DEVICES. Under a cluster executor (SLURM), the job uses what it was given.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass
class DeviceLease:
    """The device a job holds; keep this object alive for the job's life."""

    torch_device: str  # what to pass to torch: "cpu", "cuda", "cuda:0"
    device_id: str | None  # the id from the configured list, if one was locked
    reason: str
    _lock_file: IO | None = field(default=None, repr=False)

    def __enter__(self) -> DeviceLease:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def home_index(layer: int, n_layers: int, n_devices: int) -> int:
    """Layer groups of equal size map to devices in order (the seed's 0-3/4-7/8-11)."""
    return min(n_devices - 1, layer * n_devices // max(n_layers, 1))


def count_visible_gpus() -> int:
    """Number of NVIDIA GPUs, asked of nvidia-smi so CUDA stays uninitialised."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def under_cluster_scheduler() -> bool:
    return "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ


def try_lock(lock_dir: Path, device_id: str) -> IO | None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = open(lock_dir / f"device-{device_id}.lock", "a+")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def acquire_device_id(device_ids: list[str], layer: int, n_layers: int, lock_dir: Path,
                      poll_s: float = 2.0, timeout_s: float | None = None) -> tuple[str, IO, str]:
    """Lock one id from `device_ids`, home first; wait while all are taken."""
    home = home_index(layer, n_layers, len(device_ids))
    order = [home] + [k for k in range(len(device_ids)) if k != home]
    start, warned = time.monotonic(), False
    while True:
        for k in order:
            handle = try_lock(lock_dir, device_ids[k])
            if handle is not None:
                why = "home device" if k == home else f"home {device_ids[home]} busy"
                return device_ids[k], handle, why
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free device among {device_ids} after {timeout_s}s")
        if not warned:
            log.info("all devices %s are busy; waiting for one to free up", device_ids)
            warned = True
        time.sleep(poll_s)


def select_device(layer: int, n_layers: int, devices: str | list = "auto",
                  lock_dir: str | Path = ".snakemake/device-locks",
                  simulate: bool = False) -> DeviceLease:
    """Choose and lock this job's device. Call before anything touches CUDA.

    devices: "auto" (every GPU nvidia-smi lists), "cpu", or a list of GPU ids.
    simulate: lock ids from the list but compute on the CPU (tests the scheduling on
    machines without several GPUs).
    """
    if devices == "cpu":
        return DeviceLease("cpu", None, "config asks for the CPU")
    if under_cluster_scheduler() and not simulate:
        return DeviceLease("cuda", os.environ["CUDA_VISIBLE_DEVICES"],
                           "cluster scheduler assigned CUDA_VISIBLE_DEVICES")
    if devices == "auto":
        n = count_visible_gpus()
        ids = [str(k) for k in range(n)]
    else:
        ids = [str(d) for d in devices]
    if not ids:
        return DeviceLease("cpu", None, "no GPU found: running on the CPU")
    device_id, handle, why = acquire_device_id(ids, layer, n_layers, Path(lock_dir))
    if simulate:
        return DeviceLease("cpu", device_id, f"simulated device {device_id} ({why}); computing "
                           "on the CPU", handle)
    os.environ["CUDA_VISIBLE_DEVICES"] = device_id
    return DeviceLease("cuda:0", device_id, f"GPU {device_id} ({why})", handle)


@dataclass
class JobSpan:
    log: str
    device: str
    start: datetime
    end: datetime


_STAMP = re.compile(r"^(\S+ \S+) INFO .*(?:job start|job end):", re.M)
_DEVICE = re.compile(r"device_id=(\S+)")


def job_spans(log_dir: str | Path) -> list[JobSpan]:
    """When each training job held which device, read from the jobs' logs."""
    spans = []
    for path in sorted(Path(log_dir).rglob("*.log")):
        text = path.read_text()
        stamps = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in _STAMP.findall(text)]
        device = _DEVICE.search(text)
        if len(stamps) >= 2 and device:
            spans.append(JobSpan(str(path), device.group(1), stamps[0], stamps[-1]))
    return spans


def max_concurrency(spans: list[JobSpan]) -> tuple[int, list[JobSpan]]:
    """Largest set of jobs running at one instant, and those jobs."""
    best: list[JobSpan] = []
    for span in spans:
        running = [s for s in spans if s.start <= span.start < s.end]
        if len(running) > len(best):
            best = running
    return len(best), best
