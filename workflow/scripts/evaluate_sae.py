"""Snakemake adapter: metrics of one trained SAE."""

from supervised_sae import jobs
from supervised_sae.layers import parse_layer
from supervised_sae.runs import replicate_of

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.evaluate(config, snakemake.input.sae, snakemake.input.activations,
              snakemake.input.prompts, snakemake.input.model,
              parse_layer(snakemake.wildcards.layer), snakemake.output[0],
              replicate_of(snakemake.wildcards.replicate))
