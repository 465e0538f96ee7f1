"""Snakemake adapter: one SAE training job (stage 1, a stage-2 mode, or the baseline)."""

from pathlib import Path

from supervised_sae import jobs
from supervised_sae.layers import parse_layer

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
kind = snakemake.params.kind
# stage 1 writes one file; every other kind writes a run folder
out = snakemake.output[0] if kind == "stage1" else str(Path(snakemake.output.model).parent)
jobs.train_sae(config, snakemake.input.activations, parse_layer(snakemake.wildcards.layer), kind,
               out, getattr(snakemake.input, "init", None) or None,
               getattr(snakemake.input, "model", None), snakemake.params.replicate)
