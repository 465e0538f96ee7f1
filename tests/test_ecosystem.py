"""Profiles, per-rule resources, and the SAELens export."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, write_structured_activations

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.sae.export import export_saelens
from supervised_sae.train.stages import run_stage1, run_stage2

TRAINING_RULES = {"train_lm", "extract_activations", "lm_accuracy", "train_stage1",
                  "train_stage2", "train_baseline", "evaluate",
                  "probes", "steering"}


def dry_run(tmp_path, *args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "-n", *args],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def job_resources(output: str) -> list[tuple[str, dict[str, str]]]:
    jobs = []
    for block in re.split(r"\n(?=\[.*\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            pairs = dict(p.split("=", 1) for p in res.group(1).split(", "))
            jobs.append((rule.group(1), pairs))
    return jobs


@pytest.mark.workflow  # starts Snakemake
def test_slurm_profile_gives_every_training_job_a_gpu_runtime_and_memory(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    jobs = job_resources(dry_run(tmp_path, "--profile", str(REPO / "profiles/slurm")))
    assert len([r for r, _ in jobs if r == "train_stage2"]) == 36  # 3 modes x 12 layers
    for rule, res in jobs:
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, rule
        assert "slurm_account" in res and "slurm_partition" in res
        if rule in TRAINING_RULES:
            assert res["gpu"] == "1" and res["slurm_partition"] == "gpu", rule


@pytest.mark.workflow  # starts Snakemake
def test_every_rule_declares_its_resources(seed_dag_dry_run):
    jobs = job_resources(seed_dag_dry_run)
    rules = {r for r, _ in jobs}
    assert TRAINING_RULES - {"train_lm"} <= rules and "export_saelens" in rules
    for rule, res in jobs:
        if rule == "all":  # the target rule runs nothing
            continue
        for key in ("mem_mb", "runtime", "gpu"):
            assert key in res, (rule, key)
        assert (res["gpu"] == "1") == (rule in TRAINING_RULES), rule
    # SAE jobs' memory follows the SAE's size: 100,000 free slots need several GB
    assert min(int(res["mem_mb"]) for r, res in jobs if r == "train_stage1") > 3000


@pytest.mark.workflow  # starts Snakemake
def test_gpu_box_profile_is_the_three_gpu_command(tmp_path):
    out = dry_run(tmp_path, "--profile", str(REPO / "profiles/gpu-box"))
    assert "train_stage1" in out
    text = (REPO / "profiles/gpu-box/config.yaml").read_text()
    assert "cores: 12" in text and "gpu=3" in text


def test_saelens_export_reproduces_our_encoder(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    acts = write_structured_activations(tmp_path / "acts.h5", n_people=40)
    settings = SaeConfig.default(n_free=64, stage1_epochs=2, stage2_epochs=3, batch_size=16,
                                 value_head="gated")
    run_stage1(acts, 1, tmp_path / "s1.pt", settings, seed=0)
    run_stage2(acts, 1, "joint", tmp_path / "s1.pt", tmp_path / "joint", settings, seed=0)
    out = export_saelens(tmp_path / "joint/sae_final.pt", tmp_path / "saelens")
    loaded = sae_lens.SAE.load_from_disk(str(out))
    data = load_layer(acts, 1)
    x = data.x[data.slices()["test_seen"][:100]]
    from supervised_sae.sae.io import load_sae

    ours, _ = load_sae(tmp_path / "joint/sae_final.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), ours.encode(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), ours(x)["x_hat"],
                                   rtol=1e-5, atol=1e-5)
    meta = loaded.cfg.metadata.supervised_sae
    assert meta["relation_slots"]["birth_city"] == 64 + 1
    assert loaded.cfg.d_sae == 70 and loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


@pytest.mark.workflow  # starts Snakemake
def test_default_profile_applies_by_itself(seed_dag_dry_run):
    assert "Using workflow specific profile" in seed_dag_dry_run
    assert "profiles/default" in seed_dag_dry_run


@pytest.mark.workflow  # starts Snakemake
def test_workflow_is_lint_clean():
    run = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "Lints for" not in run.stdout + run.stderr, run.stdout
    assert "your workflow is in a good condition" in run.stdout + run.stderr


def test_conda_environment_has_every_runtime_dependency():
    """`--sdm conda` builds each rule's environment from this file: it must hold what
    the package needs (conda-forge names), else jobs fail at import there."""
    env = yaml.safe_load((REPO / "workflow/envs/supervised-sae.yaml").read_text())
    conda = {re.split(r"[ <>=]", dep, maxsplit=1)[0] for dep in env["dependencies"]}
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {re.split(r"[ <>=\[;]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    conda_name = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
    # snakemake runs the jobs; it is not needed inside their environments
    missing = {conda_name.get(n, n) for n in needed - {"snakemake"}} - conda
    assert not missing, f"add {sorted(missing)} to workflow/envs/supervised-sae.yaml"
    rules = [p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")]
    # every rule that runs code names the environment
    assert sum(t.count("conda:\n") for t in rules) == sum(t.count("script:") for t in rules)


# what jobs need and building the DAG must not import (it runs on every snakemake call)
HEAVY = ("torch", "transformers", "h5py", "pandas", "matplotlib")


@pytest.mark.workflow  # starts Snakemake
def test_building_the_dag_imports_neither_torch_nor_pandas_nor_matplotlib(tmp_path):
    # What the Snakefile imports, in a fresh interpreter ...
    snakefile = (REPO / "Snakefile").read_text()
    modules = sorted(set(re.findall(r"^from (supervised_sae[\w.]*) import", snakefile, re.M)))
    code = (f"import sys, {', '.join(modules)}; "
            f"print(sorted(set({list(HEAVY)!r}) & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    # ... and a dry run of the full study with them made unimportable (but pandas, which
    # Snakemake's own SLURM executor plugin imports)
    for name in set(HEAVY) - {"pandas"}:
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "__init__.py").write_text(
            f"raise ImportError('{name} imported while building the DAG')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path / "work"), "-n"], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train_stage1" in run.stdout


def test_topk_baseline_keeps_k_slots_and_exports_to_saelens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from supervised_sae.sae.encoders import TopKEncoder
    from supervised_sae.sae.io import save_sae
    from supervised_sae.sae.model import SupervisedSAE

    sae = SupervisedSAE(16, 40, 0, 1, seed=0, encoder=TopKEncoder(n_free=40, k=5))
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k fire
    x = torch.randn(30, 16)
    z = sae.encode(x)
    assert ((z > 0).sum(1) == 5).all()
    pre = x @ sae.W_enc + sae.b_enc
    assert torch.equal((z > 0), torch.zeros_like(z, dtype=torch.bool).scatter_(
        1, pre.topk(5, dim=1).indices, True))  # the 5 largest, nowhere else
    save_sae(tmp_path / "topk.pt", sae, {"layer": 0, "mode": "topk", "stage": "topk",
                                         "relation_names": []})
    loaded = sae_lens.SAE.load_from_disk(str(export_saelens(tmp_path / "topk.pt",
                                                           tmp_path / "out")))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), z, rtol=1e-5, atol=1e-5)
