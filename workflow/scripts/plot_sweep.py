"""Snakemake adapter: the L0 sweep's fronts against free-slot L0."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.sweep_figure(snakemake.input[0], snakemake.params.config, snakemake.output[0])
