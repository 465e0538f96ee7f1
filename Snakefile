# supervised-sae: supervised sparse autoencoders on an LM's activations for biography QA.
#   snakemake --cores 12 --resources gpu=3                 whole study, 3 GPUs at once
#   snakemake --cores 2 --configfile config/quickstart.yaml   tiny CPU study
#   snakemake --report report.html                          HTML report after a run
#
# Building the DAG imports only torch-free modules (config, runs). Each rule passes the
# config it reads as `params: config=`, so Snakemake reruns exactly what an edit affects.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from supervised_sae.atomic import refuse_outputs_over_inputs
from supervised_sae.config import check_config, draw_sections, sections, selected_layers
from supervised_sae.config.measure_spec import EvaluationConfig
from supervised_sae.config.memory import lm_job_memory_mb, lm_memory_mb
from supervised_sae.config.targets_spec import read_targets
from supervised_sae.config.implied import (
    reproduction_layer,
    sae_job_memory_mb,
    sweep_layer,
)
from supervised_sae.layers import layer_name, parse_layer
from supervised_sae.report.page_files import (
    FIGURES_FOLDER,
    PAGE_SECTIONS,
    SWEEP_FIGURE,
    check_page_paths,
    study_figure_paths,
)
from supervised_sae.runs import BASELINES, KIND_OF_FOLDER
from supervised_sae.runs import MODES as ALL_MODES
from supervised_sae.runs import (
    DRAW_PATTERN,
    LAYER_PATTERN,
    REPLICATE_PATTERN,
    REPRODUCTION_MODES,
    REPRODUCTION_PREFIX,
    SWEEP_MODES,
    SWEEP_PATTERN,
    draw_of,
    draw_prefix,
    evaluated_kinds,
    folder_of,
    folders_pattern,
    replicate_of,
    replicate_suffix,
    sae_overrides,
    start_file,
    sweep_prefix,
)

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# the spec's types and ranges, unknown keys, cross-key rules; the typed config
STUDY = check_config(config)
# layers as paths name them: block indices, and "emb" for the embedding output
LAYERS = [layer_name(x) for x in selected_layers(STUDY)]
MODES = list(STUDY.modes)
EVALUATED = evaluated_kinds(
    MODES, STUDY.evaluation.unsupervised_baseline, STUDY.sae.encoder
)
# replicate SAE seeds: "" (seed), "_seed1" (seed + 1), ... after each run's layer folder
REPLICATES = [replicate_suffix(r) for r in range(STUDY.sae_seeds)]
# draws of the whole chain (seed + d): "" (results/...), "draw1/" (results/draw1/...), ...
DRAWS = [draw_prefix(d) for d in range(STUDY.draws)]
# the L0 sweep, on the first draw: "sweep/k=8/", ... (none without sweep.values)
SWEEPS = [sweep_prefix(STUDY.sweep.key, v) for v in STUDY.sweep.values]
SWEPT = evaluated_kinds(SWEEP_MODES, True, STUDY.sae.encoder)  # joint, its baselines
SWEEP_LAYER = sweep_layer(STUDY)
# the sweep's SAE seeds (its own count, or the study's)
SWEEP_REPLICATES = [
    replicate_suffix(r) for r in range(STUDY.sweep.sae_seeds or STUDY.sae_seeds)
]
# the reproduction row (the seed's ReLU and L1) at one layer of the first draw, or None
REPRODUCTION_LAYER = reproduction_layer(STUDY)


# every path under results/ starts with its draw: "" (draw 0) or "draw{d}/"; a swept
# run's, then, with its sweep point ("sweep/k=8/"), the reproduction row's with
# "reproduction/"
wildcard_constraints:
    draw=DRAW_PATTERN,
    sweep=SWEEP_PATTERN,


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_targets(),
