"""Snakemake adapter: train the tokenizer and GPT-2 language model."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
config = jobs.config_from_rule(snakemake)
jobs.train_language_model(config, snakemake.input.prompts,
                          snakemake.input.biographies or None, snakemake.output[0],
                          snakemake.params.checkpoints)
