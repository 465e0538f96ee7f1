"""No command removes or overwrites what it reads, or a file or folder it did not make:
each refusal names both paths, comes before any work, and leaves the input byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from supervised_sae.atomic import (
    BEST_EPOCH,
    LM_FOLDER,
    MARKER,
    NEURONPEDIA_EXPORT,
    PAGE_FIGURES,
    SAELENS_EXPORT,
    SLOT_BROWSER,
    atomic_path,
    write_json,
    write_marker,
)
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
        with atomic_path(mine, directory=True, kind=SAELENS_EXPORT) as tmp:
            (tmp / "cfg.json").write_text("{}")
    assert (mine / "cat.jpg").read_bytes() == b"meow" and len(list(tmp_path.iterdir())) == 1
    # a folder it wrote carries the marker, so writing it again replaces it
    with atomic_path(tmp_path / "export", directory=True, kind=SAELENS_EXPORT) as tmp:
        (tmp / "cfg.json").write_text("{}")
    assert (tmp_path / "export" / MARKER).is_file()
    with atomic_path(tmp_path / "export", directory=True, kind=SAELENS_EXPORT) as tmp:
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


# --- ownership by kind: one command replaces only its own kind of folder ---------------

KINDS = [LM_FOLDER, BEST_EPOCH, SAELENS_EXPORT, PAGE_FIGURES, SLOT_BROWSER, NEURONPEDIA_EXPORT]


def existing_folder(path, kind):
    """A folder as it is on disk: one of the project's kinds, an older project folder
    (marker without a kind), or the user's own."""
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"hours of training")
    if kind == "older":
        (path / MARKER).write_text("written by supervised-sae; the project may replace this "
                                   "folder when it writes it again\n")
    elif kind != "user":
        write_marker(path, kind)
    return path


@pytest.mark.parametrize("there", [*KINDS, "older", "user"])
@pytest.mark.parametrize("writing", KINDS)
def test_a_folder_is_replaced_only_by_a_folder_of_its_own_kind(tmp_path, writing, there):
    folder = existing_folder(tmp_path / "out", there)
    if writing == there:
        with atomic_path(folder, directory=True, kind=writing) as tmp:
            (tmp / "new.txt").write_text("new")
        assert (folder / "new.txt").is_file() and not (folder / "weights.bin").exists()
        return
    with pytest.raises(FileExistsError, match=f"{folder} exists and "):
        with atomic_path(folder, directory=True, kind=writing) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (folder / "weights.bin").read_bytes() == b"hours of training"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_over_a_language_model_folder_is_refused(tmp_path):
    from conftest import write_structured_activations

    from supervised_sae.config import SaeConfig
    from supervised_sae.train.stages import run_stage1

    acts = write_structured_activations(tmp_path / "a.h5")
    run_stage1(acts, 1, tmp_path / "s1.pt", SaeConfig.default(n_free=8, stage1_epochs=1,
                                                              batch_size=16), seed=0)
    lm = existing_folder(tmp_path / "lm", LM_FOLDER)
    message = run_cli("export-saelens", "--sae", str(tmp_path / "s1.pt"), "--out", str(lm))
    assert f"{lm} exists and is a {LM_FOLDER}, not a {SAELENS_EXPORT}" in message
    assert (lm / "weights.bin").read_bytes() == b"hours of training"


@pytest.mark.parametrize("command", ["extract", "lm-accuracy", "probes", "evaluate",
                                     "steering"])
def test_no_output_inside_the_model_folder(tmp_path, command):
    model = existing_folder(tmp_path / "lm", LM_FOLDER)
    out = model / "weights.bin"
    args = {"extract": ["--prompts", "p.csv"], "lm-accuracy": ["--prompts", "p.csv"],
            "probes": ["--activations", "a.h5", "--layer", "0"],
            "evaluate": ["--sae", "s.pt", "--activations", "a.h5", "--prompts", "p.csv",
                         "--layer", "0"],
            "steering": ["--activations", "a.h5", "--prompts", "p.csv", "--layer", "0"]}
    message = run_cli(command, "--model", str(model), *args[command], "--out", str(out))
    assert f"--out {out} is inside the --model {model}" in message
    assert out.read_bytes() == b"hours of training"


@pytest.mark.parametrize("key, command", [
    ("data.prompts", ["data"]),
    ("lm.pretrained", ["train-lm", "--prompts", "p.csv"]),
    ("results_targets", ["export-saelens", "--sae", "s.pt"]),
])
def test_no_output_over_a_file_a_config_key_names(tmp_path, key, command):
    """The user's own table, model and targets file are inputs too, though no command
    line names them: an output at, inside or above one is refused."""
    import yaml

    own = tmp_path / "mine"
    own.mkdir()
    target = {"data.prompts": own / "prompts.csv", "lm.pretrained": own,
              "results_targets": own / "targets.yaml"}[key]
    if target.suffix:
        target.write_bytes((REPO / "config/targets.yaml").read_bytes())
    else:  # a real model folder: the config check reads its family and size
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)
                        ).save_pretrained(own)
    section, _, name = key.partition(".")
    config = {section: {name: str(target)}} if name else {key: str(target)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = {p.name: p.read_bytes() for p in own.iterdir()}
    try:
        message = run_cli("--config", str(tmp_path / "c.yaml"), *command, "--out", str(own))
    except BaseException as err:  # noqa: BLE001 - a config that fails to load: say which
        raise AssertionError(f"{key}: {err}") from err
    assert f"the {key} " in message and "would overwrite or delete it" in message
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before


@pytest.mark.workflow  # starts Snakemake
@pytest.mark.parametrize("case", ["prompts table", "fine-tuned in place", "page over an LM"])
def test_the_workflow_refuses_to_write_over_what_a_config_key_names(tmp_path, case):
    import yaml

    results = tmp_path / "results"
    if case == "prompts table":
        table = results / "data/prompts.csv"
        table.parent.mkdir(parents=True)
        table.write_text("person,relation,prompt,answer\n")
        config, named = {"data": {"prompts": "results/data/prompts.csv"}}, table
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = results / "lm/model"
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)
                        ).save_pretrained(model)
        write_marker(model, LM_FOLDER)
        config = ({"lm": {"pretrained": "results/lm/model", "finetune": True}}
                  if case == "fine-tuned in place"
                  else {"lm": {"pretrained": "results/lm/model"},
                        "results_page": "results/lm/model.md"})
        named = model
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--cores", "1", "--configfile", str(REPO / "config/quickstart.yaml"),
         str(tmp_path / "c.yaml")], capture_output=True, text=True)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and str(named.relative_to(tmp_path)) in out, out[-2000:]
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before
