"""Snakemake adapter: the tidy summary table of every metric, and its spread over
replicate SAE seeds."""

from supervised_sae import jobs
from supervised_sae.atomic import write_table
from supervised_sae.evaluation.summary import build_summary, over_replicates

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
summary = build_summary(snakemake.input.metrics, snakemake.input.probes, snakemake.input.lm)
write_table(snakemake.output.table, summary)
write_table(snakemake.output.over_seeds, over_replicates(summary))
