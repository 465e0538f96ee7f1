"""A real full disk (a 1 MiB tmpfs, filled) under every command's output: one line naming
the file, exit status 1 (never a segfault or a traceback), and nothing left behind.

Mounting a tmpfs needs root, as CI has; elsewhere these tests skip.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervised_sae.cli import main

TINY = {"data": {"n_people": 24, "biographies_per_person": 1},
        "lm": {"n_layer": 2, "n_embd": 32, "n_head": 2, "epochs": 1, "batch_size": 32},
        "sae": {"n_free": 64, "stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 16},
        "devices": {"ids": "cpu"}, "evaluation": {"alphas": [1], "swap_people": 2,
                                                  "probe_steps": 5}}


def cli(work: Path, *args: str, fool_free_space: bool = False) -> subprocess.CompletedProcess:
    """The command line tool in a fresh process. `fool_free_space`: the free-space check
    sees a huge disk, as when another job fills the disk after the check."""
    fooled = ("import shutil, collections; shutil.disk_usage = lambda p: collections."
              "namedtuple('u', 'total used free')(2**50, 0, 2**50); " if fool_free_space
              else "")
    code = f"{fooled}import sys; from supervised_sae.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "--config", str(work / "tiny.yaml"),
                           *args], capture_output=True, text=True, cwd=work)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Data, an LM, activations and a joint SAE, made by the tool itself."""
    work = tmp_path_factory.mktemp("inputs")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    steps = [("data", "--out", "data"),
             ("train-lm", "--prompts", "data/prompts.csv", "--biographies",
              "data/biographies.csv", "--out", "lm"),
             ("extract", "--model", "lm", "--prompts", "data/prompts.csv", "--out", "acts.h5"),
             ("train", "--activations", "acts.h5", "--layer", "1", "--mode", "stage1",
              "--out", "stage1/sae_stage1.pt"),
             ("train", "--activations", "acts.h5", "--layer", "1", "--mode", "joint",
              "--init", "stage1/sae_stage1.pt", "--model", "lm", "--out", "joint")]
    here = os.getcwd()
    os.chdir(work)  # the steps' paths are relative to it, as in `cli`
    try:
        for step in steps:  # in this process: no fault is tested here
            main(["--config", "tiny.yaml", *step])
    finally:
        os.chdir(here)
    return work


@pytest.fixture
def full_disk(inputs):
    """A 1 MiB tmpfs at inputs/full, filled to the last block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = inputs / "full"
    mount.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        with open(mount / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


COMMANDS = {
    "data": ["data", "--out", "full/data"],
    "train-lm": ["train-lm", "--prompts", "data/prompts.csv", "--biographies",
                 "data/biographies.csv", "--out", "full/lm", "--checkpoints", "full/ckpt"],
    "train-lm, model folder": ["train-lm", "--prompts", "data/prompts.csv", "--biographies",
                               "data/biographies.csv", "--out", "full/lm", "--checkpoints",
                               "lm.checkpoints"],  # finished: resumes, then writes the model
    "extract": ["extract", "--model", "lm", "--prompts", "data/prompts.csv", "--out",
                "full/acts.h5"],
    "train": ["train", "--activations", "acts.h5", "--layer", "1", "--mode", "stage1",
              "--out", "full/run/sae_stage1.pt"],
    "evaluate": ["evaluate", "--sae", "joint/sae_final.pt", "--activations", "acts.h5",
                 "--prompts", "data/prompts.csv", "--model", "lm", "--layer", "1", "--out",
                 "full/metrics.json"],
    "export-saelens": ["export-saelens", "--sae", "joint/sae_final.pt", "--out",
                       "full/saelens"],
    "probes": ["probes", "--activations", "acts.h5", "--model", "lm", "--layer", "1",
               "--out", "full/probes.json"],
    "steering": ["steering", "--activations", "acts.h5", "--prompts", "data/prompts.csv",
                 "--model", "lm", "--layer", "1", "--out", "full/steering.json"],
    "lm-accuracy": ["lm-accuracy", "--model", "lm", "--prompts", "data/prompts.csv",
                    "--out", "full/accuracy.json"],
}


def assert_one_line_and_nothing_left(run: subprocess.CompletedProcess, full: Path) -> str:
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])  # 139: a segfault
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert last.startswith("supervised-sae: error: cannot write full/"), last
    assert "No space left on device" in last or "is the disk full?" in last, last
    assert [p.name for p in full.rglob("*") if p.is_file()] == ["filler"]
    return last


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_full_disk_is_one_line_naming_the_file(name, inputs, full_disk):
    assert_one_line_and_nothing_left(cli(inputs, *COMMANDS[name]), full_disk)


def test_extraction_reserves_its_file_before_hdf5_writes(inputs, full_disk):
    """With the free-space check fooled (the disk fills after it), HDF5 used to fail
    mid-write and the process to segfault at exit (rc 139): the file's blocks are now
    allocated before any row is written."""
    run = cli(inputs, *COMMANDS["extract"], fool_free_space=True)
    assert "acts.h5" in assert_one_line_and_nothing_left(run, full_disk)
