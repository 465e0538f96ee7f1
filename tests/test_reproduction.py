"""The reproduction row: the seed's SAE as written (ReLU, the seed's L1) beside a study
on another encoder, in its own results tree, its own summary rows and page section."""

from __future__ import annotations

import pandas as pd
import pytest
from test_costs import benchmark, study_benchmarks

from supervised_sae.config import ConfigError, check_config
from supervised_sae.config.implied import draw_sections, reproduction_layer
from supervised_sae.config.load import default_dict
from supervised_sae.evaluation.summary import main_study, over_replicates, reproduced
from supervised_sae.report.costs import cost_section
from supervised_sae.report.reproduction import reproduction_section
from supervised_sae.report.summary_view import Summary
from supervised_sae.runs import (
    REPRODUCTION_PREFIX,
    is_reproduction_path,
    sae_overrides,
    start_file,
)


def topk_study(**reproduction) -> dict:
    config = default_dict()
    config["sae"] = {**config["sae"], "encoder": "topk", "k": 8}
    config["reproduction"] = reproduction
    return config


def test_the_row_runs_the_seeds_encoder_and_l1_and_keeps_every_other_setting():
    config = topk_study(layer=1)
    assert reproduction_layer(check_config(config)) == "1"
    settings = draw_sections(config, 0, "seed", "sae", sae=sae_overrides(REPRODUCTION_PREFIX))
    assert settings["sae"]["encoder"] == "relu" and settings["sae"]["sparsity"] == "seed"
    assert settings["sae"]["n_free"] == config["sae"]["n_free"]
    assert config["sae"]["encoder"] == "topk"  # the study's own config is untouched
    # its joint starts from its own stage 1, not the study's TopK one
    assert start_file("joint", ["joint"], 1, root=REPRODUCTION_PREFIX) == (
        "results/reproduction/stage1/layer1/sae_stage1.pt")
    assert is_reproduction_path("results/reproduction/joint/layer1/metrics.json")
    assert not is_reproduction_path("results/joint/layer1/metrics.json")


def test_the_config_refuses_a_row_beside_a_study_that_already_is_the_seeds():
    with pytest.raises(ConfigError, match="already are the seed's"):
        check_config({**default_dict(), "reproduction": {"layer": 1}})  # relu + seed L1
    with pytest.raises(ConfigError, match="reproduction.layer"):
        reproduction_layer(check_config(topk_study(layer=40)))  # deeper than the LM


def summary_with_row() -> pd.DataFrame:
    rows = []

    def add(reproduction, draw, metric, slice_name, value):
        rows.append({"draw": draw, "sweep": None, "reproduction": reproduction,
                     "mode": "joint", "layer": 1, "replicate": 0, "slice": slice_name,
                     "metric": metric, "value": value})

    for draw, binding in ((0, 0.99), (1, 0.97)):
        add(False, draw, "binding_accuracy", "test_seen", binding)
        add(False, draw, "l0_free", "test_seen", 8.0)
    add(True, 0, "binding_accuracy", "test_seen", 0.5)
    add(True, 0, "l0_free", "test_seen", 1500.0)
    return pd.DataFrame(rows)


def test_its_rows_stay_out_of_the_main_study_and_keep_their_own_spread():
    summary = summary_with_row()
    assert len(reproduced(summary)) == 2 and not main_study(summary)["reproduction"].any()
    main = Summary(summary)
    assert main.get("joint", 1, "test_seen", "binding_accuracy").mean == pytest.approx(0.98)
    spread = over_replicates(summary).set_index(["reproduction", "metric"])
    assert spread.loc[(True, "l0_free"), "mean"] == 1500.0
    assert spread.loc[(False, "l0_free"), "n"] == 2  # over the two draws
    # a summary written before the row existed has no reproduction column
    assert len(main_study(summary.drop(columns="reproduction"))) == len(summary)


def test_the_page_section_sets_the_seeds_joint_beside_the_studys_on_the_first_draw():
    text = "\n".join(reproduction_section(summary_with_row(), topk_study(layer=1)))
    lines = text.splitlines()
    assert lines[0] == "## The seed's SAE as written (reproduction row)"
    study = next(line for line in lines if line.startswith("| joint, the study's"))
    seed = next(line for line in lines if line.startswith("| joint, the seed's"))
    # the study's number is its first draw's (0.99), not the mean over draws (0.98)
    assert "`topk`, k = 8" in study and "| 8.0 |" in study and "| 0.990 |" in study
    assert "`relu`, `seed` L1" in seed and "| 1500.0 |" in seed and "| 0.500 |" in seed
    assert "layer 1 of the first draw" in text
    assert reproduction_section(main_study(summary_with_row()), topk_study(layer=1)) == []


def test_the_page_built_from_its_rules_sections_shows_the_row(tmp_path):
    """The results page, given the config sections its rule passes (`PAGE_SECTIONS`),
    has the reproduction section; the main tables keep the study's own joint SAE."""
    import json

    from supervised_sae.config.implied import sections
    from supervised_sae.report.results_page import PAGE_SECTIONS, write_page

    config = sections(check_config(topk_study(layer=1)).model_dump(mode="json"),
                      *PAGE_SECTIONS)
    table = tmp_path / "metrics.csv"
    summary_with_row().to_csv(table, index=False)
    lm = tmp_path / "accuracy.json"
    lm.write_text(json.dumps({"test_seen_templates": {"accuracy": 0.97},
                              "test_heldout_templates": {"accuracy": 0.91}}))
    (tmp_path / "results").mkdir()
    page = tmp_path / "docs/study.md"
    write_page(page, table, lm, {}, config, "snakemake --cores 2", tmp_path / "results")
    text = page.read_text()
    assert "## The seed's SAE as written (reproduction row)" in text
    assert "| 1500.0 |" in text.split("## The seed's SAE")[1]
    assert "1500.0" not in text.split("## The seed's SAE")[0]


def test_its_jobs_are_one_part_of_the_cost_table(tmp_path):
    study_benchmarks(tmp_path)
    benchmark(tmp_path, "reproduction/benchmarks/joint/layer1.tsv", 60)
    benchmark(tmp_path, "reproduction/benchmarks/stage1/layer1.tsv", 60)
    text = "\n".join(cost_section(tmp_path, span_minutes=40.0))
    row = next(line for line in text.splitlines() if line.startswith("| reproduction row"))
    assert row == "| reproduction row (all its jobs) | 2 | 2.0 |  | 6% |"
    assert "| training: joint | 2 | 2.0 | 1.0 |" in text  # the main study's, per draw


def test_jobs_that_train_nothing_are_not_called_training(tmp_path):
    study_benchmarks(tmp_path)
    benchmark(tmp_path, "benchmarks/slot_browser/joint_layer1.tsv", 60)
    benchmark(tmp_path, "benchmarks/some_new_rule/layer1.tsv", 60)
    text = "\n".join(cost_section(tmp_path, span_minutes=40.0))
    assert "| slot browsers | 1 | 1.0 |" in text and "| some_new_rule | 1 | 1.0 |" in text
    assert "training: slot" not in text and "training: some" not in text
