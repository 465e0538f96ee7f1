"""The study's results page: per-layer tables, targets judged at layers chosen on train
people, the published index beside ours."""

from __future__ import annotations

import json

import pandas as pd
from conftest import REPO

from supervised_sae.config.targets_spec import read_targets
from supervised_sae.report.results_page import write_page
from supervised_sae.report.summary_view import Summary, binding_table
from supervised_sae.report.targets import published_comparison, targets

SPEC = read_targets(REPO / "config/targets.yaml")

LM = {"test_seen_templates": {"accuracy": 0.97}, "test_heldout_templates": {"accuracy": 0.85}}


def summary_table() -> pd.DataFrame:
    rows = []

    def add(mode, layer, slice_name, metric, values):
        rows.extend({"mode": mode, "layer": layer, "replicate": r, "slice": slice_name,
                     "metric": metric, "value": v} for r, v in enumerate(values))

    # train people prefer layer 0, held-out people layer 1: the target must use layer 0
    for layer, train, test, topk in ((-1, 0.3, 0.2, 0.25), (0, 1.0, 0.95, 0.6),
                                     (1, 0.99, 0.995, 0.99)):
        add("joint", layer, "train_seen", "binding_accuracy", [train, train])
        add("joint", layer, "test_seen", "binding_accuracy", [test, test - 0.01])
        add("topk", layer, "test_seen", "binding_accuracy", [topk, topk + 0.02])
        add("probe", layer, "test_seen", "relation_accuracy", [0.5])
    # swaps at the published alpha: train people prefer layer 0, held-out people layer 1
    for layer, train, test in ((0, 0.8, 0.3), (1, 0.2, 0.9)):
        add("joint", layer, "swap", "decoder.train_success_rate@alpha=2", [train, train])
        add("joint", layer, "swap", "decoder.success_rate@alpha=2", [test, test])
    return pd.DataFrame(rows)


def test_targets_use_the_layer_chosen_on_train_people_and_the_seed_spread():
    found = {t.claim.split(",")[0]: t for t in targets(Summary(summary_table()), LM, SPEC)}
    binding = found["joint binding ≥ 0.99 (seen templates)"]
    assert binding.measured.startswith("0.945 ± 0.007 at layer 0")
    assert "best held-out layer: 1" in binding.measured and not binding.met
    assert not found["LM answers held-out people ≥ 0.90 (held-out paraphrases)"].met
    topk = found["supervised (joint) binding ≥ TopK's at every layer (seen templates)"]
    # joint is below TopK at emb and at layer 1; at layer 0 ahead by far more than 2 sd
    assert topk.measured.startswith("joint below TopK at: emb, 1; ahead by > 2 sd (of "
                                    "either) at: 0") and not topk.met
    early = found["the earliest stored layer binds clearly worse (by > 0.1) than the best"]
    assert early.met and "layer emb" in early.measured


def test_published_swap_comparison_reports_the_layer_chosen_on_train_people():
    swap = [line for line in published_comparison(Summary(summary_table()), SPEC["published"],
                                                   n_blocks=6)
            if "85% swap success" in line]
    assert len(swap) == 1 and "succeed most (0): 0.300 on held-out people" in swap[0]


def test_tables_name_each_layer_with_the_published_index():
    lines = binding_table(Summary(summary_table())).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| emb (0)", "| 0 (1)", "| 1 (2)"]
    assert "0.945 ± 0.007" in lines[3]


def test_page_is_written_with_its_figures_beside_it(tmp_path):
    text = written_page(tmp_path, LM)
    assert "`snakemake --cores 2`" in text and "mean ± sd over 2 SAE seed(s)" in text
    assert "![Accuracy](study/accuracy_by_layer.png)" in text
    assert (tmp_path / "docs/study/accuracy_by_layer.png").read_bytes() == b"\x89PNG fake"
    assert "| 0 (1) |" in text and "**no**" in text
    assert "never read" not in text


def test_page_says_plainly_when_the_lm_never_read_held_out_people(tmp_path):
    """Own prompts without lm.pretrained: the LM trained on train people's QA only."""
    from supervised_sae.lm.load import held_out_facts

    model = tmp_path / "model"
    model.mkdir()
    (model / "facts_read.json").write_text('{"held_out_people": 4, "held_out_people_read": 0}')
    text = written_page(tmp_path, {**LM, **held_out_facts(model)})
    assert "**the LM never read held-out people's facts" in text
    lm_rows = [line for line in text.splitlines() if line.startswith("| LM answers held-out")]
    assert len(lm_rows) == 2 and all("measures nothing" in row for row in lm_rows)


def three_draws() -> pd.DataFrame:
    """summary_table() drawn three times; held-out joint binding at layer 0 (the layer
    train people choose) is 0.995 in draws 0 and 1 and 0.95 in draw 2."""
    draws = []
    for draw, binding in ((0, 0.995), (1, 0.995), (2, 0.95)):
        t = summary_table().assign(draw=draw)
        at = (t["mode"] == "joint") & (t["layer"] == 0) & (t["slice"] == "test_seen")
        t.loc[at & (t["metric"] == "binding_accuracy"), "value"] = binding
        draws.append(t)
    return pd.concat(draws, ignore_index=True)


def test_with_draws_the_spread_is_over_draws_and_each_draw_is_left_out_in_turn(tmp_path):
    s = Summary(three_draws())
    assert s.draws == [0, 1, 2] and s.spread_over.startswith("3 draws")
    claim = "joint binding ≥ 0.99 (seen templates)"
    found = {t.claim.split(",")[0]: t for t in targets(s, LM, SPEC)}
    # mean over draws 0.980, sd over the three draw means (not over SAE seeds)
    assert found[claim].measured.startswith("0.980 ± 0.026 at layer 0")
    assert not found[claim].met
    text = written_page(tmp_path, LM, three_draws())
    assert "mean ± sd over 3 draws" in text and "## Each draw left out" in text
    section = text.split("## Each draw left out")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| {claim}"))
    # all draws: missed; without draw 0 or 1 still missed; without draw 2 (0.995): met
    assert row.endswith("| **no** | **no** | **no** | yes |")


def written_page(tmp_path, lm_accuracy: dict, summary: pd.DataFrame | None = None) -> str:
    table = tmp_path / "metrics.csv"
    (summary_table() if summary is None else summary).to_csv(table, index=False)
    lm = tmp_path / "accuracy.json"
    lm.write_text(json.dumps(lm_accuracy))
    figure = tmp_path / "accuracy_by_layer.png"
    figure.write_bytes(b"\x89PNG fake")
    config = {"data": {"n_people": 10, "biographies_per_person": 2, "test_fraction": 0.5,
                       "heldout_templates": 2, "relations": ["a", "b"]},
              "lm": {"n_layer": 2, "n_embd": 8, "n_head": 2, "epochs": 1},
              "sae": {"n_free": 4, "encoder": "topk", "k": 2, "stage1_epochs": 1,
                      "stage2_epochs": 1, "value_head": "lens", "indep_policy": "exact",
                      "indep_threshold": 1}}
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    page = tmp_path / "docs/study.md"
    write_page(page, table, lm, {"Accuracy": figure}, config, "snakemake --cores 2", results)
    return page.read_text()


def test_the_slot_browsers_are_named_by_path_not_linked(tmp_path):
    """They are files of the run: a committed page names where they are after a run and
    links to nothing that is not in the repository."""
    for run in ("layer2", "layer0", "layer2_seed1"):
        (tmp_path / f"results/joint/{run}").mkdir(parents=True)
        (tmp_path / f"results/joint/{run}/slot_browser.html").write_text("<html>")
    text = written_page(tmp_path, LM)
    section = text.split("## What the slots fire on")[1]
    assert "`results/joint/layer0/slot_browser.html`, `results/joint/layer2/slot_browser.html`" \
        in section
    assert "seed1" not in section and "](" not in section


def test_thresholds_and_published_numbers_come_from_the_targets_file():
    spec = {**SPEC, "joint": [{**SPEC["joint"][0], "goal": 0.9}],
            "published": {**SPEC["published"], "swap_success": 0.5}}
    found = {t.claim.split(",")[0]: t for t in targets(Summary(summary_table()), LM, spec)}
    assert found["joint binding ≥ 0.90 (seen templates)"].met  # 0.945 passes a 0.9 goal
    lines = published_comparison(Summary(summary_table()), spec["published"], n_blocks=6)
    assert any("50% swap success" in line for line in lines)


def with_interventions() -> pd.DataFrame:
    """The summary plus both swap variants, the published protocol and entity swaps:
    latent swaps on train people prefer layer 1, so both numbers come from layer 1."""
    from supervised_sae.evaluation.names import WALK_STEPS, walk_metric

    rows = []
    for layer, train, protocol, strict in ((0, 0.1, 0.9, 0.05), (1, 0.6, 0.7, 0.4)):
        for metric, value in (("latent.train_success_rate@alpha=1", train),
                              ("latent.success_rate@alpha=1", strict),
                              ("latent.best_success_rate", strict),
                              ("published.success_rate", protocol),
                              ("published.exact_match_rate", protocol / 2),
                              ("latent.outcomes_at_best_alpha.success", strict),
                              ("entity.cause", 0.3), ("entity.isolation", 0.8),
                              ("entity.ceiling.cause", 0.5),
                              *((walk_metric(i), protocol - i * 0.01)
                                for i in range(len(WALK_STEPS)))):
            rows.append({"mode": "joint", "layer": layer, "replicate": 0, "slice": "swap",
                         "metric": metric, "value": value})
    return pd.concat([summary_table(), pd.DataFrame(rows)], ignore_index=True)


def test_the_page_says_which_swap_number_is_comparable_with_the_published_one():
    s = Summary(with_interventions())
    lines = [line for line in published_comparison(s, SPEC["published"], n_blocks=6)
             if "85% swap success" in line]
    assert len(lines) == 1
    # layer 1 is chosen on train people's latent swaps (held-out protocol prefers 0)
    assert "**Comparable with it**" in lines[0] and "layer 1: 0.700" in lines[0]
    assert "**This project's strict number**" in lines[0] and "same layer: 0.400" in lines[0]

    from supervised_sae.report.intervention_tables import intervention_sections

    text = "\n".join(intervention_sections(s))
    assert "## The published protocol (a diagnostic, comparable with the published 0.846)" \
        in text
    walk = [line for line in text.splitlines() if line.startswith("| 0. published")]
    # joint only: the TopK SAE ran no published protocol (evaluation.published_protocol_runs)
    assert walk == ["| 0. published | 0.700 |"]
    assert "| 6. alpha chosen on train people | 0.640 |" in text
    assert "## Entity swaps" in text and "ceiling" in text


def test_entity_swap_targets_are_read_at_the_layer_of_train_peoples_entity_swaps():
    """Not at the latent swap's layer (1 in `with_interventions`): entity swaps between
    train people cause the donor's answer most at layer 0, so layer 0's held-out cause
    and isolation are the ones judged, though layer 1's would meet the goal."""
    rows = [{"mode": "joint", "layer": layer, "replicate": 0, "slice": "swap",
             "metric": metric, "value": value}
            for layer, train, held_out in ((0, 0.9, 0.7), (1, 0.4, 0.95))
            for metric, value in (("entity_train.cause", train), ("entity.cause", held_out),
                                  ("entity.isolation", held_out))]
    table = with_interventions()
    table = table[~table.metric.str.startswith("entity.")]
    found = {t.claim.split(",")[0]: t for t in targets(
        Summary(pd.concat([table, pd.DataFrame(rows)], ignore_index=True)), LM, SPEC)}
    cause = found["joint entity-swap cause ≥ 0.85"]
    isolation = found["joint entity-swap isolation ≥ 0.95 (at the entity-swap cause's layer)"]
    assert not cause.met and not isolation.met
    assert "0.700" in cause.measured and "0.700" in isolation.measured


def test_a_reading_whose_value_the_table_no_longer_shows_is_flagged(tmp_path):
    """The hand-written notes beside the page: a reading written against the number the
    table shows is kept as written; one written against another number, or naming a
    target the page lacks, is flagged on the page; one naming no target is marked."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/study_notes.md").write_text(
        "Written by hand.\n\n"
        "- **Paraphrases (missed by 0.050).** The LM reads 0.850.\n"
        "  <!-- checks: LM answers held-out people ≥ 0.90 (held-out paraphrases) = 0.850 -->\n"
        "- **Binding (missed).** Written when it was 0.930.\n"
        "  <!-- checks: joint binding ≥ 0.99 (seen templates) = 0.930 -->\n"
        "- **Gone.** <!-- checks: a target nobody has = 0.5 -->\n"
        "- **Wall time.** 63 minutes.\n")
    text = written_page(tmp_path, LM)
    reading = text.split("## Reading the targets")[1].split("## Beside")[0]
    assert "- **Paraphrases (missed by 0.050).** The LM reads 0.850." in reading
    assert ("- **Out of date:** written against 0.930; the table now says 0.945. "
            "**Binding (missed).**") in reading
    assert "- **Out of date:** it reads the target “a target nobody has”" in reading
    assert "- *(unchecked: names no target)* **Wall time.**" in reading
    assert "<!--" not in reading


def test_the_page_shows_the_l0_sweep_and_judges_joint_against_its_baseline(tmp_path):
    from test_sweep import swept_summary

    sweep = swept_summary()
    summary = pd.concat([summary_table().assign(draw=0), sweep[sweep["sweep"].notna()]])
    text = written_page(tmp_path, LM, summary)
    assert "## The L0 sweep" in text and "| 16 | 16.0 | 16.0 |" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| joint ahead of the TopK SAE at every swept k"))
    assert "not ahead: latent swap success at k=8" in row and row.endswith("| **no** |")
    # the main study's tables never mix in the sweep's runs (layer 2 is not a study layer)
    assert "| 2 (3) |" not in text


def test_ceilings_take_the_layer_lowest_on_train_people_and_the_spliced_drop_is_derived():
    rows = []
    for layer, fvu_train, fvu_test, spliced_train, spliced_test in (
            (0, 0.04, 0.06, 0.98, 0.96), (1, 0.08, 0.03, 0.96, 0.985)):
        for metric, train, test in (("fvu", fvu_train, fvu_test),
                                    ("clean_accuracy", 0.99, 0.99),
                                    ("spliced_accuracy", spliced_train, spliced_test)):
            rows += [{"mode": "joint", "layer": layer, "replicate": 0, "slice": s,
                      "metric": metric, "value": v}
                     for s, v in (("train_seen", train), ("test_seen", test))]
    # a topk encoder: no TopK run, its unsupervised SAE is the sparse baseline
    rows += [{"mode": "unsupervised", "layer": layer, "replicate": 0, "slice": "test_seen",
              "metric": "binding_accuracy", "value": 0.5} for layer in (0, 1)]
    rows += [{"mode": "joint", "layer": layer, "replicate": 0, "slice": "test_seen",
              "metric": "binding_accuracy", "value": 0.9} for layer in (0, 1)]
    summary = Summary(pd.DataFrame(rows))
    found = {t.claim.split(",")[0]: t for t in targets(summary, LM, SPEC)}
    # reconstruction ceilings hold at every layer: the worst held-out layer is reported
    fvu = found["joint FVU ≤ 0.05"]
    assert fvu.measured == "0.060 at layer 0 (the worst of 2 layers)" and not fvu.met
    assert fvu.claim.endswith(", at every layer")
    drop = found["joint spliced accuracy within 0.02 of clean (seen templates)"]
    assert drop.measured.startswith("0.030 at layer 0") and not drop.met
    # a ceiling at a chosen layer: where train people's FVU is lowest (layer 0)
    chosen = {**SPEC, "joint": [{"claim": "FVU ≤ {goal}", "choose": ["joint", "train_seen", "fvu"],
                                 "report": ["test_seen", "fvu"], "goal": 0.05, "at_most": True}]}
    at_layer = next(t for t in targets(summary, LM, chosen) if t.claim.startswith("FVU"))
    assert at_layer.measured.startswith("0.060 at layer 0 (best held-out layer: 1, 0.030")
    beats = found["supervised (joint) binding ≥ the unsupervised SAE's at every layer "
                  "(seen templates)"]
    assert beats.measured.startswith("joint below the unsupervised SAE at: none")


def against_diffmean(joint: list[float], diffmean: list[float]) -> pd.DataFrame:
    """Three draws: joint's latent swap (train people choose layer 1, where held-out
    people's is `joint`, one value per draw), DiffMean at each layer (`diffmean` at layer
    1) and the ceiling 0.9."""
    rows = []
    for draw in range(3):
        def add(mode, layer, metric, value, draw=draw):
            rows.append({"draw": draw, "mode": mode, "layer": layer, "replicate": 0,
                         "slice": "swap", "metric": metric, "value": value})
        for layer, train in ((0, 0.2), (1, 0.6)):
            held_out = joint[draw] if layer == 1 else 0.1
            add("joint", layer, "latent.train_success_rate@alpha=1", train)
            add("joint", layer, "latent.success_rate@alpha=1", held_out)
            add("joint", layer, "latent.best_success_rate", held_out)
            add("steering", layer, "diffmean.train_success_rate@alpha=1", 0.5)
            add("steering", layer, "diffmean.best_success_rate",
                diffmean[draw] if layer == 1 else 0.3)
            add("steering", layer, "probe_direction.best_success_rate", 0.25)
            add("steering", layer, "ceiling.success_rate", 0.9)
            add("steering", layer, "entity.cause", 0.4)
            add("steering", layer, "entity.ceiling.cause", 0.5)
    draws = pd.concat([summary_table().assign(draw=d) for d in range(3)], ignore_index=True)
    return pd.concat([draws, pd.DataFrame(rows)], ignore_index=True)


def test_the_page_says_first_when_a_difference_of_means_steers_better(tmp_path):
    claim = "joint latent swap ahead of DiffMean by > 2 sd (α of each chosen on train people)"
    losing = against_diffmean([0.40, 0.42, 0.44], [0.80, 0.82, 0.84])
    found = {t.claim.split(",")[0]: t for t in targets(Summary(losing), LM, SPEC)}
    assert not found[claim].met
    assert found[claim].measured == "joint 0.420 ± 0.020, DiffMean 0.820 ± 0.020 at layer 1"
    # the swap target is also stated as a share of the one-position ceiling (0.9)
    latent = found["joint swap success ≥ 0.85 (latent"]
    assert latent.measured.endswith("; 47% of the one-position ceiling (0.900 ± 0.000)")
    text = written_page(tmp_path, LM, losing)
    first = text.split("## How it ran")[0]
    assert "**the supervised slot loses to a difference of means**" in first
    section = text.split("## Against the simplest tools")[1].split("\n## ")[0]
    assert "| 1 (2) | 0.420 ± 0.020 |" in section
    assert "against DiffMean: ahead by > 2 sd at no layer; behind by > 2 sd at 0, 1" in section
    assert "as a share of the ceiling (0.900 ± 0.000): joint latent 47%" in section
    winning = against_diffmean([0.80, 0.82, 0.84], [0.40, 0.42, 0.44])
    found = {t.claim.split(",")[0]: t for t in targets(Summary(winning), LM, SPEC)}
    assert found[claim].met
    # one draw near the other's: within the spread, not ahead
    close = against_diffmean([0.50, 0.80, 0.65], [0.60, 0.62, 0.64])
    found = {t.claim.split(",")[0]: t for t in targets(Summary(close), LM, SPEC)}
    assert not found[claim].met


def test_every_study_figure_has_its_report_caption_and_a_page_title():
    """The figures' names live in one table (`page_files`): the rules build their outputs
    and the page's inputs from it, so a figure added there needs only these two."""
    from pathlib import Path

    from supervised_sae.report.page_files import FIGURE_TITLES, STUDY_FIGURES, SWEEP_FIGURE

    for key, name in {**STUDY_FIGURES, "sweep": SWEEP_FIGURE}.items():
        assert (REPO / "workflow/report" / f"{Path(name).stem}.rst").is_file(), name
        assert key in FIGURE_TITLES, key
