# Evaluation: metrics per run, linear probes, summary, figures.

HEATMAP_LAYER = STUDY.evaluation.heatmap_layer
if HEATMAP_LAYER is None:
    HEATMAP_LAYER = LAYERS[len(LAYERS) // 2]
HEATMAP_LAYER = layer_name(parse_layer(HEATMAP_LAYER))
if HEATMAP_LAYER not in LAYERS:
    raise ValueError(
        f"evaluation.heatmap_layer={HEATMAP_LAYER} is not among layers {LAYERS}"
    )


rule evaluate:
    input:
        sae="results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/sae_final.pt",
        activations=ACTIVATIONS,
        prompts=PROMPTS,
        model=LM_DIR,
    output:
        "results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/metrics.json",
    log:
        "results/{draw}{sweep}logs/evaluate/{run_dir}_layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}{sweep}benchmarks/evaluate/{run_dir}_layer{layer}{replicate}.tsv"
    wildcard_constraints:
        run_dir=EVALUATED_FOLDERS,
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=sae_lm_mem_mb,
        runtime=60,
    params:
        config=sections(config, *EvaluationConfig.evaluation_job_keys()),
    script:
        "../scripts/evaluate_sae.py"


rule probes:
    input:
        activations=ACTIVATIONS,
        model=LM_DIR,
    output:
        PROBES,
    log:
        "results/{draw}logs/probes/layer{layer}.log",
    benchmark:
        "results/{draw}benchmarks/probes/layer{layer}.tsv"
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=lm_mem_mb,
        runtime=30,
    params:
        config=sections(config, "evaluation.probe_steps"),
    script:
        "../scripts/probes.py"


rule steering:
    input:
        activations=ACTIVATIONS,
        prompts=PROMPTS,
        model=LM_DIR,
    output:
        STEERING,
    log:
        "results/{draw}logs/steering/layer{layer}.log",
    benchmark:
        "results/{draw}benchmarks/steering/layer{layer}.tsv"
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=lm_mem_mb,
        runtime=30,
    params:
        config=sections(
            config,
            "evaluation.swap_people",
            "evaluation.steering_alphas",
            "evaluation.probe_steps",
        ),
    script:
        "../scripts/steering.py"


rule plot_training:
    input:
        "results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/training_history.json",
    output:
        report(
            "results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/training_curves.png",
            caption="../report/training_curves.rst",
            category="{run_dir}",
            subcategory="layer {layer}",
        ),
    log:
        "results/{draw}{sweep}logs/plot_training/{run_dir}_layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}{sweep}benchmarks/plot_training/{run_dir}_layer{layer}{replicate}.tsv"
    wildcard_constraints:
        run_dir=EVALUATED_FOLDERS,
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **SMALL_JOB,
    script:
        "../scripts/plot_sae_training.py"


rule summarize:
    input:
        metrics=[
            *run_files(EVALUATED, LAYERS, ["metrics.json"]),
            *sweep_files(["metrics.json"]),
            *reproduction_files(["metrics.json"]),
        ],
        probes=expand(PROBES, draw=DRAWS, layer=LAYERS),
        steering=expand(STEERING, draw=DRAWS, layer=LAYERS),
        lm=expand(LM_ACCURACY, draw=DRAWS),
    output:
        table=report(
            "results/summary/metrics.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        over_seeds=report(
            "results/summary/metrics_over_seeds.csv",
            caption="../report/summary_over_seeds.rst",
            category="Summary",
        ),
    log:
        "results/logs/summarize.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **SMALL_JOB,
    script:
        "../scripts/summarize.py"


rule study_figures:
    input:
        summary="results/summary/metrics.csv",
        # draw 0, seed 0's runs: one heatmap and one swap curve per run kind
        heatmap=run_files(EVALUATED, [HEATMAP_LAYER], ["metrics.json"], [""], [""]),
        swaps=run_files(EVALUATED, LAYERS, ["metrics.json"], [""], [""]),
    output:
        **{
            key: report(
                path,
                caption=f"../report/{Path(path).stem}.rst",
                category="Across layers",
            )
            for key, path in study_figure_paths().items()
        },
    log:
        "results/logs/study_figures.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **SMALL_JOB,
    script:
        "../scripts/plot_study.py"


rule sweep_figure:
    input:
        "results/summary/metrics.csv",
    output:
        report(
            f"{FIGURES_FOLDER}/{SWEEP_FIGURE}",
            caption="../report/l0_sweep.rst",
            category="L0 sweep",
        ),
    log:
        "results/logs/sweep_figure.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **SMALL_JOB,
    params:
        config=sections(config, "sae", "sweep"),
    script:
        "../scripts/plot_sweep.py"


# what each slot fires on, as a static page (draw 0's first SAE seed of each joint run)
rule slot_browser:
    input:
        sae="results/{draw}{run_dir}/layer{layer}{replicate}/sae_final.pt",
        activations=ACTIVATIONS,
        prompts=PROMPTS,
        model=LM_DIR,
    output:
        browser=directory(
            "results/{draw}{run_dir}/layer{layer}{replicate}/slot_browser"
        ),
        page=report(
            "results/{draw}{run_dir}/layer{layer}{replicate}/slot_browser.html",
            caption="../report/slot_browser.rst",
            category="Slot browser",
            subcategory="layer {layer}",
        ),
    log:
        "results/{draw}logs/slot_browser/{run_dir}_layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}benchmarks/slot_browser/{run_dir}_layer{layer}{replicate}.tsv"
    wildcard_constraints:
        run_dir=EVALUATED_FOLDERS,
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        mem_mb=sae_lm_mem_mb,
        runtime=30,
        gpu=0,
    params:
        layer=lambda wildcards: parse_layer(wildcards.layer),
    script:
        "../scripts/slot_browser.py"


rule export_saelens:
    input:
        "results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/sae_final.pt",
    output:
        directory("results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/saelens"),
    log:
        "results/{draw}{sweep}logs/export_saelens/{run_dir}_layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}{sweep}benchmarks/export_saelens/{run_dir}_layer{layer}{replicate}.tsv"
    wildcard_constraints:
        run_dir=EVALUATED_FOLDERS,
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=sae_mem_mb,
        runtime=10,
        gpu=0,
    script:
        "../scripts/export_saelens.py"


if STUDY.results_page:
    # before Snakemake removes the page's figure folder (a directory() output): refuse
    # a page or folder there that this project did not write
    check_page_paths(STUDY.results_page)

    rule results_page:
        input:
            **study_figure_paths(),
            summary="results/summary/metrics.csv",
            lm=expand(LM_ACCURACY, draw=DRAWS),
            browsers=slot_browsers(),
            sweep=[f"{FIGURES_FOLDER}/{SWEEP_FIGURE}"] if SWEEPS else [],
            notes=results_page_notes(),
            targets=results_targets(),
        output:
            page=STUDY.results_page,
            figures=directory(str(Path(STUDY.results_page).with_suffix(""))),
        log:
            "results/logs/results_page.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **SMALL_JOB,
        params:
            config=sections(config, *PAGE_SECTIONS),
            command=study_command(),
        script:
            "../scripts/results_page.py"
