"""Device locks: concurrent jobs get distinct devices, home first; crashes free them."""

import os
import signal
import subprocess
import sys
import time

import pytest

from supervised_sae.train.devices import home_index, select_device

HOLD = """
import sys, time
from supervised_sae.train.devices import select_device
lease = select_device(int(sys.argv[1]), 12, ["gpu0", "gpu1", "gpu2"], sys.argv[2], simulate=True)
print(lease.device_id, flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold(layer, lock_dir, seconds):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(layer), str(lock_dir),
                             str(seconds)], stdout=subprocess.PIPE, text=True)


def test_home_groups_follow_the_seed():
    assert [home_index(layer, 12, 3) for layer in range(12)] == [0] * 4 + [1] * 4 + [2] * 4


def test_three_jobs_get_three_home_devices(tmp_path):
    procs = [hold(layer, tmp_path, 3) for layer in (9, 1, 5)]
    ids = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait()
    assert ids == ["gpu2", "gpu0", "gpu1"]


def test_same_home_jobs_spread_over_free_devices(tmp_path):
    procs = []
    for _ in range(3):  # all three want gpu0
        procs.append(hold(0, tmp_path, 4))
        time.sleep(0.8)
    ids = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait()
    assert ids[0] == "gpu0" and sorted(ids) == ["gpu0", "gpu1", "gpu2"]


def test_a_killed_job_releases_its_device(tmp_path):
    first = hold(4, tmp_path, 60)
    assert first.stdout.readline().strip() == "gpu1"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    lease = select_device(4, 12, ["gpu0", "gpu1", "gpu2"], tmp_path, simulate=True)
    assert lease.device_id == "gpu1" and lease.torch_device == "cpu"
    lease.release()
    # a simulated placement leaves CUDA's view of this process alone
    assert {k: os.environ.get(k) for k in before} == before


def test_no_gpu_means_cpu(tmp_path):
    assert select_device(0, 12, "cpu", tmp_path).torch_device == "cpu"
    assert select_device(0, 12, [], tmp_path).torch_device == "cpu"


# ---- placement among the GPUs a job can see (fake nvidia-smi, no CUDA touched) ----

FAKE_NVIDIA_SMI = """#!/bin/sh
# a machine with $FAKE_GPUS GPUs, answering the two queries the package makes
i=0
while [ "$i" -lt "${FAKE_GPUS:-8}" ]; do
  case "$*" in
    *--query-gpu*) echo "$i, GPU-fake-$i" ;;
    *) echo "GPU $i: Fake GPU (UUID: GPU-fake-$i)" ;;
  esac
  i=$((i + 1))
done
"""

JOB = """
import os, sys, time
from pathlib import Path
from supervised_sae.train.devices import select_device
ids = sys.argv[2] if sys.argv[2] in ("auto", "cpu") else sys.argv[2].split(",")
lease = select_device(int(sys.argv[1]), 12, ids)
print(os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"),
      lease.torch_device, flush=True)
release = Path(sys.argv[3])
for _ in range(600):  # hold the device until the test has seen every job's choice
    if release.exists():
        break
    time.sleep(0.1)
"""


@pytest.fixture
def machine(tmp_path):
    """Environment of a job on a fake GPU machine: nvidia-smi on PATH, a private temp
    directory (where the per-machine lock folder goes) and no inherited GPU settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TMPDIR=str(tmp_path / "tmp"),
               FAKE_GPUS="8")
    return env


def concurrent_jobs(tmp_path, env, layers, ids="auto", cwds=None, **extra_env):
    """Start one job per layer at once; return what each ended up with, while all of
    them still hold their device: (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, torch)."""
    release = tmp_path / f"release-{time.monotonic_ns()}"
    env = {**env, **extra_env}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(layer), ids, str(release)],
                              stdout=subprocess.PIPE, text=True, env=env,
                              cwd=(cwds[k] if cwds else tmp_path))
             for k, layer in enumerate(layers)]
    try:
        seen = [tuple(p.stdout.readline().split()) for p in procs]
    finally:
        release.touch()
        for p in procs:
            p.wait(timeout=60)
    return seen


def test_plain_machine_jobs_narrow_to_distinct_gpus(tmp_path, machine):
    seen = concurrent_jobs(tmp_path, machine, [9, 1, 5], FAKE_GPUS="3")
    assert seen == [("2", "PCI_BUS_ID", "cuda:0"), ("0", "PCI_BUS_ID", "cuda:0"),
                    ("1", "PCI_BUS_ID", "cuda:0")]


def test_inherited_visible_devices_are_the_pool(tmp_path, machine):
    # a user restricted to GPUs 4,5,6 of 8: jobs stay on those, one each
    seen = concurrent_jobs(tmp_path, machine, [9, 1, 5], CUDA_VISIBLE_DEVICES="4,5,6")
    assert [s[0] for s in seen] == ["6", "4", "5"]


def test_slurm_job_with_one_gpu_uses_it_without_waiting(tmp_path, machine):
    # two single-GPU jobs of one node: each uses what it was given, no lock between them
    seen = concurrent_jobs(tmp_path, machine, [0, 0], SLURM_JOB_ID="7",
                           CUDA_VISIBLE_DEVICES="3")
    assert seen == [("3", "PCI_BUS_ID", "cuda:0")] * 2


def test_jobs_inside_a_slurm_allocation_of_three_share_nothing(tmp_path, machine):
    # sbatch --gres=gpu:3 running snakemake --resources gpu=3: three jobs, three GPUs
    seen = concurrent_jobs(tmp_path, machine, [9, 1, 5], SLURM_JOB_ID="7",
                           CUDA_VISIBLE_DEVICES="0,1,2", FAKE_GPUS="3")
    assert [s[0] for s in seen] == ["2", "0", "1"]


def test_two_studies_in_different_folders_see_each_others_locks(tmp_path, machine):
    studies = [tmp_path / "study_a", tmp_path / "study_b"]
    for folder in studies:
        folder.mkdir()
    seen = concurrent_jobs(tmp_path, machine, [0, 0], cwds=studies, FAKE_GPUS="2")
    assert sorted(s[0] for s in seen) == ["0", "1"]


def test_a_gpu_named_by_uuid_and_by_index_is_one_lock(tmp_path, machine):
    # one job sees GPU 1 by its UUID, another sees GPUs 1,2 by index: not both on GPU 1
    release = tmp_path / "release-uuid"
    first = subprocess.Popen([sys.executable, "-c", JOB, "0", "auto", str(release)],
                             stdout=subprocess.PIPE, text=True,
                             env={**machine, "CUDA_VISIBLE_DEVICES": "GPU-fake-1"})
    try:
        assert first.stdout.readline().split()[0] == "GPU-fake-1"
        seen = concurrent_jobs(tmp_path, machine, [0], CUDA_VISIBLE_DEVICES="1,2")
    finally:
        release.touch()
        first.wait(timeout=60)
    assert seen[0][0] == "2"


def test_configured_ids_outside_what_the_job_sees_are_an_error(machine, monkeypatch):
    for key, value in machine.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    with pytest.raises(ValueError, match=r"devices.ids \['0', '5'\]: \['0'\] not among"):
        select_device(0, 12, [0, 5])


def test_a_workflow_job_uses_its_rules_threads_not_every_core():
    """Two one-thread jobs side by side on two cores must not each take both."""
    code = """
from types import SimpleNamespace
import torch
from supervised_sae import jobs
from supervised_sae.config import load_config
rule = SimpleNamespace(params=SimpleNamespace(config={}), threads=1,
                       config={"devices": load_config([]).devices.model_dump()})
before = torch.get_num_threads()
jobs.config_from_rule(rule)
print(before, torch.get_num_threads())
"""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["2", "1"]
