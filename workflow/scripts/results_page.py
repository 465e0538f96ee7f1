"""Snakemake adapter: the study's Markdown results page, figures beside it."""

from pathlib import Path

from supervised_sae import jobs
from supervised_sae.report.results_page import write_page

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
figures = {"Accuracy by layer": snakemake.input.accuracy,
           "Reconstruction by layer": snakemake.input.reconstruction,
           "Binding heatmaps": snakemake.input.heatmaps,
           "Swaps": snakemake.input.swaps,
           **({"L0 sweep": snakemake.input.sweep[0]} if snakemake.input.sweep else {})}
write_page(snakemake.output.page, snakemake.input.summary, snakemake.input.lm,
           {title: Path(path) for title, path in figures.items()},
           snakemake.params.config, snakemake.params.command,
           targets_file=snakemake.input.targets)
