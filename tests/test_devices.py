"""Device locks: concurrent jobs get distinct devices, home first; crashes free them."""

import os
import signal
import subprocess
import sys
import time

from supervised_sae.devices import home_index, select_device

HOLD = """
import sys, time
from supervised_sae.devices import select_device
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
    lease = select_device(4, 12, ["gpu0", "gpu1", "gpu2"], tmp_path, simulate=True)
    assert lease.device_id == "gpu1" and lease.torch_device == "cpu"
    lease.release()


def test_no_gpu_means_cpu(tmp_path):
    assert select_device(0, 12, "cpu", tmp_path).torch_device == "cpu"
    assert select_device(0, 12, [], tmp_path).torch_device == "cpu"
