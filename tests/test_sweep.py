"""The L0 sweep: its config, its rows in the summary, its fronts, table and target."""

from __future__ import annotations

import pandas as pd
import pytest

from supervised_sae.config import ConfigError, check_config
from supervised_sae.config.implied import draw_sections
from supervised_sae.config.load import default_dict
from supervised_sae.evaluation.summary import over_replicates
from supervised_sae.report.summary_view import Summary
from supervised_sae.report.sweep import (
    plot_l0_fronts,
    sweep_table,
    sweep_target,
    with_main_point,
)
from supervised_sae.runs import sae_overrides


def swept_summary() -> pd.DataFrame:
    """Joint and TopK at k = 8 and 16 (two SAE seeds each), beside one main-study row.
    Joint is ahead on paraphrase binding at both; on latent swaps only at k = 16."""
    rows = []

    def add(sweep, mode, slice_name, metric, values):
        rows.extend({"draw": 0, "sweep": sweep, "mode": mode, "layer": 2, "replicate": r,
                     "slice": slice_name, "metric": metric, "value": v}
                    for r, v in enumerate(values))

    for k in (8, 16):
        for mode, binding, latent in (("joint", (0.95, 0.97), (0.50, 0.52) if k == 8
                                       else (0.80, 0.82)),
                                      ("topk", (0.60, 0.62), (0.49, 0.51))):
            add(k, mode, "test_seen", "l0_free", (k, k))
            add(k, mode, "test_seen", "fvu", (0.2 / k, 0.21 / k))
            add(k, mode, "test_heldout", "binding_accuracy", binding)
            add(k, mode, "swap", "latent.best_success_rate", latent)
    add(None, "joint", "test_heldout", "binding_accuracy", (0.1,))
    return pd.DataFrame(rows)


def test_sweep_rows_stay_out_of_the_main_study_and_keep_their_value_in_the_spread():
    summary = swept_summary()
    main = Summary(summary)
    assert main.get("joint", 2, "test_heldout", "binding_accuracy").mean == 0.1
    spread = over_replicates(summary)
    at8 = spread[(spread["sweep"] == 8) & (spread["mode"] == "joint")
                 & (spread["metric"] == "binding_accuracy")]
    assert len(at8) == 1 and at8["mean"].iloc[0] == pytest.approx(0.96)
    assert spread["sweep"].isna().sum() == 1  # the main study's row


def test_the_sweep_target_names_each_value_where_joint_is_not_ahead_by_2_sd(tmp_path):
    summary = Summary(swept_summary()).sweep
    target = sweep_target(summary, "k")
    assert not target.met and target.measured == "not ahead: latent swap success at k=8"
    table = sweep_table(summary, "k").splitlines()
    assert table[0].startswith("| k | joint L0 | TopK SAE L0 | joint binding, paraphrases")
    assert table[2].endswith("| yes | 0.510 ± 0.014 | 0.500 ± 0.014 | **no** |")
    assert table[3].startswith("| 16 | 16.0 | 16.0 | 0.960 ± 0.014")
    one_seed = summary[summary["replicate"] == 0]
    assert "cannot be judged" in sweep_target(one_seed, "k").measured
    assert not sweep_target(one_seed, "k").met
    plot_l0_fronts(summary, tmp_path / "fronts.png")
    assert (tmp_path / "fronts.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_point_sets_its_key_and_the_config_refuses_a_sweep_it_cannot_run():
    config = default_dict()
    swept = draw_sections(config, 0, "seed", "sae", sae=sae_overrides("sweep/k=8/"))
    assert swept["sae"]["k"] == 8 and isinstance(swept["sae"]["k"], int)
    assert config["sae"]["k"] == 64  # the study's own config is untouched
    bad = {**config, "sweep": {"key": "k", "values": [8, 16], "layer": None}}
    with pytest.raises(ConfigError) as err:
        check_config(bad)
    assert "sweep.key=k with sae.encoder=relu" in str(err.value)
    assert "sweep.layer is not" in str(err.value)


def test_the_main_studys_own_k_joins_the_sweep_once_at_the_sweep_layer_of_the_first_draw():
    summary = swept_summary()
    extra = pd.DataFrame([
        {"draw": d, "sweep": None, "mode": m, "layer": layer, "replicate": 0,
         "slice": "test_heldout", "metric": "binding_accuracy", "value": v}
        for d, m, layer, v in ((0, "joint", 2, 0.99), (0, "topk", 2, 0.7),
                               (1, "joint", 2, 0.5), (0, "joint", 0, 0.4),
                               (0, "separate_value", 2, 0.3))])
    summary = pd.concat([summary, extra], ignore_index=True)
    config = {"sae": {"k": 32}, "sweep": {"key": "k", "values": [8, 16], "layer": 2}}
    with_main = with_main_point(summary, config)
    point = with_main[with_main["sweep"] == 32]
    # draw 0's joint and TopK at layer 2 only: the main row of 0.1 and the new 0.99
    assert sorted(point["value"]) == [0.1, 0.7, 0.99] and set(point["layer"]) == {2}
    assert len(Summary(with_main).rows) == len(Summary(summary).rows)  # main study unchanged
    assert "| 32 |" in sweep_table(Summary(with_main).sweep, "k")
    # the sweep trained that value itself, or there is no sweep: nothing is added
    assert with_main_point(summary, {**config, "sae": {"k": 16}}).equals(summary)
    assert with_main_point(summary[summary["sweep"].isna()], config).equals(
        summary[summary["sweep"].isna()])
