"""Snakemake adapter: the study's Markdown results page, figures beside it."""

from supervised_sae import jobs
from supervised_sae.report.steps import FIGURE_TITLES

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
figures = {key: getattr(snakemake.input, key) for key in FIGURE_TITLES if key != "sweep"}
if snakemake.input.sweep:
    figures["sweep"] = snakemake.input.sweep[0]
jobs.results_page(snakemake.output.page, snakemake.input.summary, snakemake.input.lm,
                  figures, snakemake.params.config, snakemake.params.command,
                  snakemake.input.targets)
