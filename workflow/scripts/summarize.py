"""Snakemake adapter: the tidy summary table of every metric, and its spread over
replicate SAE seeds."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.summarize(snakemake.input.metrics, snakemake.input.probes, snakemake.input.lm,
               snakemake.output.table, snakemake.output.over_seeds, snakemake.input.steering)
