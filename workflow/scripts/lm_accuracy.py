"""Snakemake adapter: the LM's first-answer-token accuracy."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.lm_accuracy(config, snakemake.input.model, snakemake.input.prompts,
                 snakemake.output[0])
