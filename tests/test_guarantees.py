"""Promises held on every route: no seed wraps onto another, no run is counted twice, no
file is read as what it is not (issue #41's items 2, 4 and 5)."""

from __future__ import annotations

import json
import logging

import h5py
import pytest
from conftest import write_structured_activations

from supervised_sae.cli import main as cli
from supervised_sae.config import ConfigError, SaeConfig
from supervised_sae.config.load import check_config, default_dict, merge
from supervised_sae.config.spec import GENERATOR_SEEDS
from supervised_sae.data.store_layout import ActivationFileError
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.summary import build_summary
from supervised_sae.runs import SWEEP_PATTERN, sweep_of, sweep_prefix
from supervised_sae.train.stages import run_stage1, run_stage2

SETTINGS = SaeConfig.default(n_free=16, stage1_epochs=1, stage2_epochs=1, batch_size=16,
                             value_head="gated", eval_every=1, checkpoint_every=1)


def checked(over: dict):
    config = default_dict()
    merge(config, over)
    return check_config(config)


# --- every seed bounded on every route -------------------------------------------------

@pytest.mark.parametrize("over", [  # with the default 12 blocks: 99 + 99 + 11 > 200
    {"draws": 100, "sae_seeds": 100},
    {"draws": 100, "sweep": {"sae_seeds": 100, "values": [8], "layer": 0},
     "sae": {"encoder": "topk", "k": 8}},
    {"lm": {"n_layer": 512, "n_embd": 64, "n_head": 4}},
])
def test_no_config_lets_a_seed_wrap_past_2_to_the_32(over):
    """The largest seed a job uses (seed + draw + replicate + layer) stays below 2^32, or
    the config is refused naming the bound: past it, PyTorch repeats a small seed."""
    top = GENERATOR_SEEDS - 1 - 200  # the largest seed the field itself admits
    with pytest.raises(ConfigError, match=r"past PyTorch's 2\^32 seeds.*use seed <="):
        checked({"seed": top, **over})
    message = str(pytest.raises(ConfigError, checked, {"seed": top, **over}).value)
    allowed = int(message.rsplit("use seed <= ", 1)[1].split()[0].rstrip(";"))
    checked({**over, "seed": allowed})  # the bound it names is the bound it keeps


@pytest.mark.parametrize("replicate", [-1, 2**32, GENERATOR_SEEDS - 1])
def test_a_replicate_seed_out_of_range_is_refused_on_the_command_line(replicate, tmp_path):
    acts = write_structured_activations(tmp_path / "a.h5")
    out = tmp_path / "s1.pt"
    with pytest.raises(SystemExit) as err:
        cli(["--config", "config/quickstart.yaml", "train", "--activations", str(acts),
             "--layer", "1", "--mode", "stage1", "--out", str(out),
             "--replicate", str(replicate)])
    assert f"replicate={replicate}" in str(err.value.code) and "2^32" in str(err.value.code)
    assert not out.exists()


# --- no row counted twice --------------------------------------------------------------

@pytest.mark.parametrize("values", [[8, 8], [8, 8.0], [16, 8, 16.0]])
def test_a_sweep_value_given_twice_is_refused(values):
    with pytest.raises(ConfigError, match=r"sweep.values=.* given more than once"):
        checked({"sae": {"encoder": "topk", "k": 8},
                 "sweep": {"values": values, "layer": 0}})


@pytest.mark.parametrize("values", [[0.1234567, 0.1234568], [0.00001, 0.00002], [8, 16]])
def test_sweep_folders_keep_each_value_exactly(values):
    """Values that differ get folders that differ, that the wildcard reads back exactly
    (once, `{value:g}` rounded to six digits and wrote 1e-05, which no rule matched)."""
    import re

    prefixes = [sweep_prefix("target_l0", v) for v in values]
    assert len(set(prefixes)) == len(values)
    for value, prefix in zip(values, prefixes, strict=True):
        assert re.fullmatch(SWEEP_PATTERN, prefix), prefix
        assert sweep_of(prefix) == ("target_l0", value)


def test_the_summary_refuses_a_file_listed_twice(tmp_path):
    run = tmp_path / "results/joint/layer0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"layer": 0, "slices": {}}))
    with pytest.raises(ValueError, match="listed more than once"):
        build_summary([run / "metrics.json", tmp_path / "results/joint/../joint/layer0/"
                       "metrics.json"], [], None)


# --- files consistent with their run ---------------------------------------------------

@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    work = tmp_path_factory.mktemp("stage1")
    acts = write_structured_activations(work / "activations.h5")
    run_stage1(acts, 1, work / "sae_stage1.pt", SETTINGS, seed=0)
    return acts, work / "sae_stage1.pt"


@pytest.mark.parametrize("change", [{"encoder": "topk", "k": 4}, {"n_free": 32},
                                    {"value_head": "slot_only"}])
def test_stage_2_refuses_a_start_file_built_with_other_settings(stage1, tmp_path, change):
    acts, init = stage1
    other = SaeConfig.default(**{**SETTINGS.model_dump(), **change})
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"other SAE settings .*{key}: .* there, .* in the "
                                         "config"):
        run_stage2(acts, 1, "joint", init, tmp_path / "joint", other, seed=0)
    assert not (tmp_path / "joint/sae_final.pt").exists()


def test_evaluation_refuses_a_stage_1_sae(stage1, tmp_path):
    from supervised_sae.evaluation.job import evaluate_sae

    acts, init = stage1
    with pytest.raises(ValueError, match="a 'stage1' SAE; evaluation takes a finished run"):
        evaluate_sae(init, acts, tmp_path / "prompts.csv", tmp_path / "model", 1)


def test_a_relation_without_rows_is_refused_where_the_store_is_read(tmp_path):
    acts = write_structured_activations(tmp_path / "a.h5")
    with h5py.File(acts, "r+") as f:
        names = list(f["relation_names"][:])
        del f["relation_names"]
        f["relation_names"] = [*names, b"spouse"]
    with pytest.raises(ActivationFileError, match=r"relation_names \['spouse'\] have no rows"):
        load_layer(acts, 0)


def test_a_free_bank_that_never_fires_is_said_loudly(tmp_path, caplog):
    acts = write_structured_activations(tmp_path / "a.h5")
    dead = SaeConfig.default(**{**SETTINGS.model_dump(), "encoder": "jumprelu",
                                "jumprelu_threshold": 1e6})
    with caplog.at_level(logging.WARNING):
        run_stage1(acts, 1, tmp_path / "s1.pt", dead, seed=0)
    assert "EVERY ONE of the 16 free slots is dead" in caplog.text


# --- every user file checked before compute: the targets file --------------------------

TARGET = {"claim": "joint FVU ≤ {goal}", "report": ["test_seen", "fvu"], "goal": 0.05,
          "every_layer": True, "at_most": True}


def targets_file(tmp_path, **change):
    import yaml
    from conftest import REPO

    spec = yaml.safe_load((REPO / "config/targets.yaml").read_text())
    spec["joint"] = [{**TARGET, **change.pop("target", {})}]
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


@pytest.mark.parametrize("change, named", [
    ({"target": {"at_mots": True}}, r"joint.0.at_mots: Extra inputs"),  # a typo'd ceiling
    ({"target": {"goal": None}}, r"joint.0.goal"),
    ({"lm": None}, r"lm: Field required"),
    ({"target": {"report": ["test_sen", "fvu"]}}, r"report slice 'test_sen'"),
    ({"target": {"choose": ["joint", "train_seen", "fvu"]}}, r"exactly one"),
    ({"target": {"choose": ["jiont", "train_seen", "fvu"], "every_layer": False}},
     r"choose mode 'jiont'"),
    ({"published": {"model": "x"}}, r"published.n_blocks: Field required"),
])
def test_a_bad_targets_file_is_refused_naming_the_key(tmp_path, change, named):
    from supervised_sae.config.targets_spec import read_targets

    path = targets_file(tmp_path, **change)
    with pytest.raises(ValueError, match=rf"results_targets .*{named}"):
        read_targets(path)


def test_a_target_whose_metric_no_run_wrote_is_shown_not_judged(tmp_path):
    import pandas as pd

    from supervised_sae.config.targets_spec import read_targets
    from supervised_sae.report.summary_view import Summary
    from supervised_sae.report.targets import targets

    spec = read_targets(targets_file(tmp_path, target={"report": ["test_seen", "fvv"]},
                                     early_layer_gap=None, beats_topk=False,
                                     beats_diffmean=False))
    table = pd.DataFrame([{"mode": "joint", "layer": 0, "slice": "test_seen", "metric": "fvu",
                           "value": 0.01, "replicate": 0, "draw": 0, "sweep": None,
                           "reproduction": False}])
    lm = {f"test_{kind}_templates": {"accuracy": 0.99} for kind in ("seen", "heldout")}
    found = [t for t in targets(Summary(table), lm, spec) if "FVU" in t.claim]
    assert [t.met for t in found] == [None]
    assert "no run wrote metric `fvv` (did you mean `fvu`?)" in found[0].measured


@pytest.mark.workflow  # starts Snakemake
def test_the_workflow_refuses_a_bad_targets_file_before_any_job(tmp_path):
    import subprocess
    import sys

    import yaml
    from conftest import REPO

    bad = targets_file(tmp_path, target={"at_mots": True})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"results_page": "page.md",
                                                     "results_targets": str(bad)}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "-n", "--configfile",
                          str(REPO / "config/quickstart.yaml"), str(tmp_path / "c.yaml")],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "joint.0.at_mots: Extra inputs" in run.stderr + run.stdout
    assert not (tmp_path / "results").exists()
