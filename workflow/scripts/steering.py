"""Snakemake adapter: the baselines that are not SAEs at one layer (steering.json)."""

from supervised_sae import jobs
from supervised_sae.layers import parse_layer

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.steering(config, snakemake.input.activations, snakemake.input.prompts,
              snakemake.input.model, parse_layer(snakemake.wildcards.layer), snakemake.output[0])
