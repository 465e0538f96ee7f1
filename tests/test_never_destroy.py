"""No command removes or overwrites what it reads, or a file or folder it did not make:
each refusal names both paths, comes before any work, and leaves the input byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from supervised_sae.atomic import MARKER, atomic_path, write_json
from supervised_sae.cli import main
from supervised_sae.config import ConfigError, check_config, default_dict


def run_cli(*args: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return str(stop.value)


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "results/joint/layer1"
    folder.mkdir(parents=True)
    (folder / "sae_final.pt").write_bytes(b"an SAE the user trained for a day")
    (folder / "metrics.json").write_text("{}")
    return folder


def test_export_into_the_sae_s_own_run_folder_is_refused(run_folder):
    sae = run_folder / "sae_final.pt"
    message = run_cli("export-saelens", "--sae", str(sae), "--out", str(run_folder))
    assert f"--out {run_folder} holds the --sae {sae}" in message
    assert sae.read_bytes() == b"an SAE the user trained for a day"
    assert sorted(p.name for p in run_folder.iterdir()) == ["metrics.json", "sae_final.pt"]


def test_evaluate_onto_its_own_sae_is_refused(run_folder, tmp_path):
    sae = run_folder / "sae_final.pt"
    message = run_cli("evaluate", "--sae", str(sae), "--activations", str(tmp_path / "a.h5"),
                      "--prompts", str(tmp_path / "p.csv"), "--model", str(tmp_path / "m"),
                      "--layer", "1", "--out", str(sae))
    assert f"--out {sae} is the --sae {sae}" in message
    assert sae.read_bytes() == b"an SAE the user trained for a day"


def test_an_output_beside_an_input_is_fine():
    from supervised_sae.atomic import refuse_outputs_over_inputs

    refuse_outputs_over_inputs({"--sae": "results/joint/layer1/sae_final.pt"},
                               {"--out": "results/joint/layer1/metrics.json"})
    refuse_outputs_over_inputs({"--sae": "results/joint/layer1/sae_final.pt"},
                               {"--out": "results/joint/layer1/saelens"})


def test_a_folder_the_project_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match=f"{mine} exists and was not written by "
                                              "supervised-sae"):
        with atomic_path(mine, directory=True) as tmp:
            (tmp / "cfg.json").write_text("{}")
    assert (mine / "cat.jpg").read_bytes() == b"meow" and len(list(tmp_path.iterdir())) == 1
    # a folder it wrote carries the marker, so writing it again replaces it
    with atomic_path(tmp_path / "export", directory=True) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (tmp_path / "export" / MARKER).is_file()
    with atomic_path(tmp_path / "export", directory=True) as tmp:
        (tmp / "cfg.json").write_text('{"again": 1}')
    assert json.loads((tmp_path / "export/cfg.json").read_text()) == {"again": 1}


@pytest.mark.workflow  # starts Snakemake
def test_results_page_over_a_foreign_folder_is_refused_before_snakemake_acts(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.txt").write_text("the user's notes")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--configfile", str(REPO / "config/quickstart.yaml"), "--config",
         "results_page=docs.md", "--directory", str(tmp_path)],
        capture_output=True, text=True)
    assert run.returncode != 0
    assert "docs exists and was not written by supervised-sae" in run.stdout + run.stderr
    assert (docs / "keep.txt").read_text() == "the user's notes"


def test_results_page_over_a_foreign_file_is_refused(tmp_path):
    from supervised_sae.report.results_page import check_page_paths

    page = tmp_path / "README.md"
    page.write_text("# my project\n")
    with pytest.raises(FileExistsError, match=f"{page} exists and was not written"):
        check_page_paths(page)
    assert page.read_text() == "# my project\n"


def test_seeds_that_would_repeat_smaller_ones_are_refused():
    config = default_dict()
    config["seed"] = 2**40  # its low 32 bits are seed 0's
    with pytest.raises(ConfigError, match=r"'seed' = 1099511627776: Input should be less "
                                          r"than or equal to 4294967095"):
        check_config(config)
    # room for 100 draws and 100 SAE seeds (seed + d + r) below 2^32
    config["seed"] = 2**32 - 201
    check_config(config)
    config["seed"] = 2**32 - 200
    with pytest.raises(ConfigError, match="'seed' = 4294967096"):
        check_config(config)


def test_json_with_a_non_finite_number_is_refused_naming_the_key(tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics.json: not written: .* in slices.test_seen"
                                         r".fvu"):
        write_json(out, {"slices": {"test_seen": {"fvu": float("nan")}}})
    assert not out.exists() and not list(tmp_path.iterdir())
