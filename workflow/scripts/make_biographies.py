"""Snakemake adapter: synthetic people, biographies and prompts."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
jobs.setup_logging(snakemake.log[0])
jobs.make_data(snakemake.config, snakemake.output.people, snakemake.output.biographies,
               snakemake.output.prompts)
