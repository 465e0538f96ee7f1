"""Snakemake adapter: training curves of one run (plot_sae_training.py of the seed)."""

from supervised_sae import jobs
from supervised_sae.report.plots import plot_training_curves

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
plot_training_curves(snakemake.input[0], snakemake.output[0])
