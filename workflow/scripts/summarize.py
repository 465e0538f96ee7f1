"""Snakemake adapter: the tidy summary table of every metric."""

from pathlib import Path

from supervised_sae import jobs
from supervised_sae.atomic import write_table
from supervised_sae.summary import build_summary

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
by_mode: dict[str, list[str]] = {}
for path in snakemake.input.metrics:
    by_mode.setdefault(Path(path).parent.parent.name, []).append(path)
write_table(snakemake.output[0], build_summary(by_mode, snakemake.input.probes,
                                               snakemake.input.lm))
