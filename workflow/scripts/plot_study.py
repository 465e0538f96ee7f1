"""Snakemake adapter: the across-layer figures of the study."""

from supervised_sae import jobs
from supervised_sae.report.steps import STUDY_FIGURES

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.study_figures(snakemake.input.summary, snakemake.input.heatmap, snakemake.input.swaps,
                   {key: getattr(snakemake.output, key) for key in STUDY_FIGURES})
