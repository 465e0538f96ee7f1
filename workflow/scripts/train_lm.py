"""Snakemake adapter: train the tokenizer and GPT-2 language model."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.train_language_model(snakemake.config, snakemake.input.prompts,
                          snakemake.input.biographies or None, snakemake.output[0],
                          snakemake.params.checkpoints)
