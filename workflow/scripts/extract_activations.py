"""Snakemake adapter: activations of every layer into HDF5."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.extract(config, snakemake.input.model, snakemake.input.prompts,
             snakemake.output[0])
