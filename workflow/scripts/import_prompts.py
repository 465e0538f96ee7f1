"""Snakemake adapter: validate the user's prompts table."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.import_prompts(snakemake.config, snakemake.input[0], snakemake.output[0])
