"""The workflow's reporting steps, one function each: the summary table, the figures,
the results page and the SAELens export. The Snakemake scripts and the command-line tool
call these (through `supervised_sae.jobs`), so a rule and its command do the same work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae.atomic import write_table
from supervised_sae.evaluation.summary import build_summary, main_study, over_replicates
from supervised_sae.report.page_files import (  # noqa: F401 (the steps' names, here too)
    FIGURE_TITLES,
    STUDY_FIGURES,
    SWEEP_FIGURE,
)
from supervised_sae.runs import SLOT_FOLDERS, run_location


def summarize(metric_files: Iterable[str | Path], probe_files: Iterable[str | Path],
              lm_files: Iterable[str | Path], table_out: str | Path,
              over_seeds_out: str | Path, steering_files: Iterable[str | Path] = ()
              ) -> pd.DataFrame:
    """metrics.csv (every number of every run, and of the layers' baselines) and its
    spread over seeds or draws."""
    summary = build_summary(metric_files, probe_files, lm_files, steering_files)
    write_table(table_out, summary)
    write_table(over_seeds_out, over_replicates(summary))
    return summary


def study_figures(summary_csv: str | Path, heatmap_metrics: Sequence[str | Path],
                  swap_metrics: Sequence[str | Path], outs: dict[str, str | Path]) -> None:
    """The across-layer figures (`STUDY_FIGURES` keys in `outs`): the main study's
    accuracies and reconstruction from the summary, the binding heatmaps of
    `heatmap_metrics` (one layer) and the swap curves of `swap_metrics` (draw 0, seed 0)."""
    from supervised_sae.report.plots import (
        plot_accuracy_by_layer,
        plot_binding_heatmaps,
        plot_reconstruction_by_layer,
    )
    from supervised_sae.report.swap_plots import plot_simplest_tools, plot_swaps

    summary = main_study(pd.read_csv(summary_csv))  # the L0 sweep has its own figure
    plot_accuracy_by_layer(summary, outs["accuracy"])
    plot_reconstruction_by_layer(summary, outs["reconstruction"])
    plot_binding_heatmaps({run_location(p)[0]: p for p in heatmap_metrics}, outs["heatmaps"])
    swaps: dict[str, dict[int, str | Path]] = {}  # run folder -> layer -> metrics.json
    for path in swap_metrics:
        run_dir, layer, _ = run_location(path)
        if run_dir in SLOT_FOLDERS:  # runs with slots of their own to steer
            swaps.setdefault(run_dir, {})[layer] = path
    plot_swaps(swaps, outs["swaps"])
    plot_simplest_tools(summary, outs["simplest_tools"])


def sweep_figure(summary_csv: str | Path, config: dict[str, Any], out: str | Path) -> None:
    """The L0 sweep's fronts; the main study's own value at the swept layer is a point
    of them too. `config`: the `sae` and `sweep` sections."""
    from supervised_sae.report.sweep import plot_l0_fronts, with_main_point

    summary = with_main_point(pd.read_csv(summary_csv), config)
    plot_l0_fronts(summary, out, config["sweep"]["key"])


def training_curves(history: str | Path, out: str | Path) -> None:
    """One run's training curves (the seed's plot_sae_training.py)."""
    from supervised_sae.report.plots import plot_training_curves

    plot_training_curves(history, out)


def results_page(page: str | Path, summary_csv: str | Path, lm_files: Sequence[str | Path],
                 figures: dict[str, str | Path], config: dict[str, Any], command: str,
                 targets: str | Path) -> None:
    """The Markdown results page; `figures` by `FIGURE_TITLES` key (copied beside it)."""
    from supervised_sae.report.results_page import write_page

    write_page(page, summary_csv, list(lm_files),
               {FIGURE_TITLES[key]: Path(path) for key, path in figures.items()},
               config, command, targets_file=targets)
