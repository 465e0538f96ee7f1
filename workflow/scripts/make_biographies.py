"""Snakemake adapter: synthetic people, biographies and prompts."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.make_data(config, snakemake.output.people, snakemake.output.biographies,
               snakemake.output.prompts)
