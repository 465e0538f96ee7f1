# Evaluation: metrics per run, the unsupervised baseline, linear probes, summary, figures.

UNSUPERVISED = config["evaluation"]["unsupervised_baseline"]
RUN_DIRS = [MODE_DIRS[m] for m in MODES] + (["unsupervised"] if UNSUPERVISED else [])
HEATMAP_LAYER = config["evaluation"].get("heatmap_layer")
if HEATMAP_LAYER is None:
    HEATMAP_LAYER = LAYERS[len(LAYERS) // 2]
if HEATMAP_LAYER not in LAYERS:
    raise ValueError(
        f"evaluation.heatmap_layer={HEATMAP_LAYER} is not among layers {LAYERS}"
    )


rule train_unsupervised:
    input:
        ACTIVATIONS,
    output:
        model="results/unsupervised/layer{layer}/sae_final.pt",
        history="results/unsupervised/layer{layer}/training_history.json",
    log:
        "results/logs/unsupervised/layer{layer}.log",
    benchmark:
        "results/benchmarks/unsupervised/layer{layer}.tsv"
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=12 * 60,
    script:
        "../scripts/train_sae.py"


rule evaluate:
    input:
        sae="results/{run_dir}/layer{layer}/sae_final.pt",
        activations=ACTIVATIONS,
        prompts=PROMPTS,
        model=LM_DIR,
    output:
        "results/{run_dir}/layer{layer}/metrics.json",
    log:
        "results/logs/evaluate/{run_dir}_layer{layer}.log",
    benchmark:
        "results/benchmarks/evaluate/{run_dir}_layer{layer}.tsv"
    wildcard_constraints:
        run_dir="joint|feature_activation|next_token_prediction|unsupervised",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=60,
    script:
        "../scripts/evaluate_sae.py"


rule probes:
    input:
        ACTIVATIONS,
    output:
        "results/baselines/layer{layer}/probes.json",
    log:
        "results/logs/probes/layer{layer}.log",
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    script:
        "../scripts/probes.py"


rule plot_training:
    input:
        "results/{run_dir}/layer{layer}/training_history.json",
    output:
        report(
            "results/{run_dir}/layer{layer}/training_curves.png",
            caption="../report/training_curves.rst",
            category="{run_dir}",
            subcategory="layer {layer}",
        ),
    log:
        "results/logs/plot_training/{run_dir}_layer{layer}.log",
    wildcard_constraints:
        run_dir="joint|feature_activation|next_token_prediction|unsupervised",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/plot_sae_training.py"


rule summarize:
    input:
        metrics=expand(
            "results/{run_dir}/layer{layer}/metrics.json",
            run_dir=RUN_DIRS,
            layer=LAYERS,
        ),
        probes=expand("results/baselines/layer{layer}/probes.json", layer=LAYERS),
        lm="results/lm/accuracy.json",
    output:
        report(
            "results/summary/metrics.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "results/logs/summarize.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/summarize.py"


rule study_figures:
    input:
        summary="results/summary/metrics.csv",
        heatmap=expand(
            "results/{run_dir}/layer{layer}/metrics.json",
            run_dir=RUN_DIRS,
            layer=HEATMAP_LAYER,
        ),
        swaps=expand(
            "results/{run_dir}/layer{layer}/metrics.json",
            run_dir=RUN_DIRS,
            layer=LAYERS,
        ),
    output:
        accuracy=report(
            "results/figures/accuracy_by_layer.png",
            caption="../report/accuracy_by_layer.rst",
            category="Across layers",
        ),
        reconstruction=report(
            "results/figures/reconstruction_by_layer.png",
            caption="../report/reconstruction_by_layer.rst",
            category="Across layers",
        ),
        heatmaps=report(
            "results/figures/binding_heatmaps.png",
            caption="../report/binding_heatmaps.rst",
            category="Across layers",
        ),
        swaps=report(
            "results/figures/swaps.png",
            caption="../report/swaps.rst",
            category="Across layers",
        ),
    log:
        "results/logs/study_figures.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    params:
        run_dirs=RUN_DIRS,
        layers=LAYERS,
        heatmap_layer=HEATMAP_LAYER,
    script:
        "../scripts/plot_study.py"


rule export_saelens:
    input:
        "results/{run_dir}/layer{layer}/sae_final.pt",
    output:
        directory("results/{run_dir}/layer{layer}/saelens"),
    log:
        "results/logs/export_saelens/{run_dir}_layer{layer}.log",
    wildcard_constraints:
        run_dir="joint|feature_activation|next_token_prediction|unsupervised",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=sae_mem_mb,
        runtime=10,
        gpu=0,
    script:
        "../scripts/export_saelens.py"
