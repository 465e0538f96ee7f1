"""The benchmark scripts a user runs by hand start cleanly where they cannot measure."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: it would run")
def test_gpu_check_skips_in_one_line_without_cuda():
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device visible to torch; nothing to check (skipped)"]
