"""Snakemake adapter: one SAE training job (stage 1, or stage 2 of one mode)."""

from pathlib import Path

from supervised_sae import jobs
from supervised_sae.training import MODE_DIRS

snakemake = globals()["snakemake"]
jobs.setup_logging(snakemake.log[0])
layer = int(snakemake.wildcards.layer)
if snakemake.rule == "train_stage1":
    jobs.train_sae(snakemake.config, snakemake.input[0], layer, "stage1", snakemake.output[0])
elif snakemake.rule == "train_unsupervised":
    jobs.train_sae(snakemake.config, snakemake.input[0], layer, "unsupervised",
                   str(Path(snakemake.output.model).parent))
else:
    mode_of_dir = {d: m for m, d in MODE_DIRS.items()}
    run_dir = Path(snakemake.output.model).parent
    mode = mode_of_dir[run_dir.parent.name]
    jobs.train_sae(snakemake.config, snakemake.input.activations, layer, mode, str(run_dir),
                   snakemake.input.init)
