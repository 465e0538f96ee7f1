"""Snakemake adapter: training curves of one run (plot_sae_training.py of the seed)."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.training_curves(snakemake.input[0], snakemake.output[0])
