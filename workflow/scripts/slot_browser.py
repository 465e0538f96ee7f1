"""Snakemake adapter: the slot browser of one trained SAE at its layer."""

from supervised_sae import jobs

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
jobs.slot_browser(snakemake.input.sae, snakemake.input.activations, snakemake.input.prompts,
                  snakemake.input.model, int(snakemake.params.layer),
                  snakemake.output.browser, snakemake.output.page)
