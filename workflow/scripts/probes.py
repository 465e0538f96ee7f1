"""Snakemake adapter: linear probes and the logit lens on one layer's raw activations."""

from supervised_sae import jobs
from supervised_sae.layers import parse_layer

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.probes(config, snakemake.input.activations, parse_layer(snakemake.wildcards.layer),
            snakemake.output[0], snakemake.input.model)
