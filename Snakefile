# supervised-sae: supervised sparse autoencoders on an LM's activations for biography QA.
#   snakemake --cores 12 --resources gpu=3                 whole study, 3 GPUs at once
#   snakemake --cores 2 --configfile config/quickstart.yaml   tiny CPU study
#   snakemake --report report.html                          HTML report after a run
import os
from pathlib import Path

from snakemake.utils import min_version, validate

from supervised_sae.config import check_config
from supervised_sae.jobs import selected_layers
from supervised_sae.training import MODE_DIRS

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
check_config(config, SCHEMA)  # unknown keys with suggestions, ranges, cross-key rules
validate(config, SCHEMA)

LAYERS = selected_layers(config)
MODES = config["modes"]


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        "results/lm/accuracy.json",
        expand(
            "results/{mode_dir}/layer{layer}/{name}",
            mode_dir=[MODE_DIRS[m] for m in MODES],
            layer=LAYERS,
            name=["sae_final.pt", "training_history.json"],
        ),
        expand(
            "results/{run_dir}/layer{layer}/{name}",
            run_dir=RUN_DIRS,
            layer=LAYERS,
            name=["metrics.json", "training_curves.png", "saelens"],
        ),
        "results/summary/metrics.csv",
        "results/figures/accuracy_by_layer.png",
