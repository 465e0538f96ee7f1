"""Snakemake adapter: the L0 sweep's fronts against free-slot L0."""

import pandas as pd

from supervised_sae import jobs
from supervised_sae.report.sweep import plot_l0_fronts, with_main_point

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
# the main study's own k at the sweep's layer is a point of the fronts too
summary = with_main_point(pd.read_csv(snakemake.input[0]), snakemake.params.config)
plot_l0_fronts(summary, snakemake.output[0], snakemake.params.key)
