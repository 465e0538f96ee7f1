"""Pick the device a training job runs on.

Snakemake only counts `gpu` resources; it never says which GPU. So each job picks one
from the GPUs it can see: the entries of an inherited CUDA_VISIBLE_DEVICES (a user
restricted to some GPUs, or a SLURM allocation of several), else every GPU nvidia-smi
lists, optionally narrowed by `devices.ids`. It takes an exclusive fcntl.flock on one of
them, preferring its layer group's home device (3 devices, 12 layers: 0-3, 4-7, 8-11),
else any free one, and waits while all are busy. The kernel drops the lock when the
process ends, however it ends. Locks are keyed by the GPU's UUID and live in one folder
per machine (default: under the temp directory), so two studies on one machine, or two
jobs of one allocation, see each other's. Before CUDA starts, the job narrows
CUDA_VISIBLE_DEVICES to its GPU, with CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA's
numbering is nvidia-smi's. A SLURM job given exactly one GPU uses it without locking.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass
class DeviceLease:
    """The device a job holds; keep this object alive for the job's life."""

    torch_device: str  # what to pass to torch: "cpu" or "cuda:0" (the one GPU left visible)
    device_id: str | None  # the GPU (as CUDA_VISIBLE_DEVICES names it), if one was chosen
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
    # the embedding output (layer -1) goes with the first group
    return min(n_devices - 1, max(layer, 0) * n_devices // max(n_layers, 1))


def nvidia_smi_gpus() -> dict[str, str]:
    """nvidia-smi's GPUs as {index: UUID}, asked of nvidia-smi so CUDA stays
    uninitialised; empty when there is no nvidia-smi or it fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    gpus = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            gpus[parts[0]] = parts[1]
    return gpus


def visible_entries() -> list[str] | None:
    """The inherited CUDA_VISIBLE_DEVICES as a list (None when unset). Set but empty
    means no GPU at all, as for CUDA."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def device_pool(configured: str | list) -> tuple[list[str], dict[str, str]]:
    """The GPUs this job may use, as CUDA_VISIBLE_DEVICES entries in order, and the
    lock key of each (its UUID where nvidia-smi gives one)."""
    smi = nvidia_smi_gpus()
    inherited = visible_entries()
    pool = inherited if inherited is not None else list(smi)
    if configured != "auto":
        wanted = [str(d) for d in configured]
        outside = [d for d in wanted if d not in pool]
        if outside:
            where = ("CUDA_VISIBLE_DEVICES=" + ",".join(pool) if inherited is not None
                     else f"nvidia-smi's GPUs {pool}")
            raise ValueError(f"devices.ids {wanted}: {outside} not among the GPUs this job "
                             f"can see ({where}); list only those, or use ids: auto")
        pool = wanted
    return pool, {entry: smi.get(entry, entry) for entry in pool}


def default_lock_dir() -> Path:
    """One folder per machine, shared by every study and user on it."""
    return Path(tempfile.gettempdir()) / "supervised-sae-device-locks"


def try_lock(lock_dir: Path, key: str) -> IO | None:
    if not lock_dir.exists():
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:  # anyone may add locks (sticky, like /tmp): users share the GPUs
            lock_dir.chmod(0o1777)
        except PermissionError:
            pass
    path = lock_dir / f"device-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {os.getcwd()}\n")  # who holds it, for a curious user
    handle.flush()
    return handle


def acquire_device_id(device_ids: list[str], layer: int, n_layers: int, lock_dir: Path,
                      poll_s: float = 2.0, timeout_s: float | None = None,
                      lock_keys: dict[str, str] | None = None) -> tuple[str, IO, str]:
    """Lock one id from `device_ids`, home first; wait while all are taken."""
    keys = lock_keys or {}
    home = home_index(layer, n_layers, len(device_ids))
    order = [home] + [k for k in range(len(device_ids)) if k != home]
    start, warned = time.monotonic(), False
    while True:
        for k in order:
            handle = try_lock(lock_dir, keys.get(device_ids[k], device_ids[k]))
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
                  lock_dir: str | Path | None = None, simulate: bool = False) -> DeviceLease:
    """Choose and lock this job's device. Call before anything touches CUDA.

    devices: "auto" (every GPU the job can see), "cpu", or a list of GPU ids (indices or
    UUIDs, among those it can see). lock_dir: None for the machine's shared folder.
    simulate: lock ids from the list but compute on the CPU (tests the scheduling on
    machines without several GPUs).
    """
    if devices == "cpu":
        return DeviceLease("cpu", None, "config asks for the CPU")
    compute, note = ("cpu", "; simulated: computing on the CPU") if simulate else ("cuda:0", "")
    inherited = visible_entries()
    if "SLURM_JOB_ID" in os.environ and inherited is not None and len(inherited) == 1:
        if not simulate:
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        return DeviceLease(compute, inherited[0], f"the one GPU SLURM gave this job{note}")
    if simulate:  # the configured ids stand for GPUs; no nvidia-smi is asked
        ids = [str(d) for d in devices] if devices != "auto" else (inherited or [])
        keys: dict[str, str] = {}
    else:
        ids, keys = device_pool(devices)
    if not ids:
        return DeviceLease("cpu", None, "no GPU found: running on the CPU")
    lock_path = Path(lock_dir) if lock_dir else default_lock_dir()
    device_id, handle, why = acquire_device_id(ids, layer, n_layers, lock_path,
                                               lock_keys=keys)
    if not simulate:  # a simulated placement leaves CUDA's view alone
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's numbering = nvidia-smi's
        os.environ["CUDA_VISIBLE_DEVICES"] = device_id
    return DeviceLease(compute, device_id, f"GPU {device_id} of {','.join(ids)} ({why}; lock "
                       f"{keys.get(device_id, device_id)} in {lock_path}){note}", handle)


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
