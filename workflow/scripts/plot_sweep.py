"""Snakemake adapter: the L0 sweep's fronts against free-slot L0."""

import pandas as pd

from supervised_sae import jobs
from supervised_sae.report.sweep import plot_l0_fronts

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
plot_l0_fronts(pd.read_csv(snakemake.input[0]), snakemake.output[0], snakemake.params.key)
