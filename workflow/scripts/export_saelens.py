"""Snakemake adapter: one trained SAE in SAELens's on-disk format."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.export_saelens(snakemake.input[0], snakemake.output[0])
