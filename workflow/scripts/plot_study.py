"""Snakemake adapter: the across-layer figures of the study."""

import pandas as pd

from supervised_sae import jobs
from supervised_sae.evaluation.summary import main_study
from supervised_sae.report.plots import (
    plot_accuracy_by_layer,
    plot_binding_heatmaps,
    plot_reconstruction_by_layer,
)
from supervised_sae.report.swap_plots import plot_swaps
from supervised_sae.runs import SLOT_FOLDERS, run_location

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
summary = main_study(pd.read_csv(snakemake.input.summary))  # the L0 sweep has its own
plot_accuracy_by_layer(summary, snakemake.output.accuracy)
plot_reconstruction_by_layer(summary, snakemake.output.reconstruction)
plot_binding_heatmaps({run_location(p)[0]: p for p in snakemake.input.heatmap},
                      snakemake.output.heatmaps)
swaps: dict[str, dict[int, str]] = {}  # run folder -> layer -> metrics.json (seed 0)
for path in snakemake.input.swaps:
    run_dir, layer, _ = run_location(path)
    if run_dir in SLOT_FOLDERS:  # runs with slots of their own to steer
        swaps.setdefault(run_dir, {})[layer] = path
plot_swaps(swaps, snakemake.output.swaps)
