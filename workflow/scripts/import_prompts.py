"""Snakemake adapter: validate the user's prompts table."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.import_prompts(config, snakemake.input[0], snakemake.output[0])
