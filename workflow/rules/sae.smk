# SAE training: stage 1 per layer (shared), stage 2 per mode and layer, and the
# baselines without relation slots (unsupervised, TopK). Checkpoints live in checkpoints/ beside the outputs (not
# declared), so a killed job resumes there instead of starting over; their identity
# covers every setting and input that changes the result.
wildcard_constraints:
    layer=LAYER_PATTERN,
    replicate=REPLICATE_PATTERN,


rule train_stage2:
    input:
        activations=ACTIVATIONS,
        init=start_file_of_run,
        model=LM_DIR,  # the lens value head reads out through the LM's unembedding
    output:
        model="results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/sae_final.pt",
        history="results/{draw}{sweep}{run_dir}/layer{layer}{replicate}/training_history.json",
    log:
        "results/{draw}{sweep}logs/{run_dir}/layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}{sweep}benchmarks/{run_dir}/layer{layer}{replicate}.tsv"
    wildcard_constraints:
        run_dir=folders_pattern(ALL_MODES),
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=sae_lm_mem_mb,
        runtime=12 * 60,
    params:
        config=draw_params("seed", "sae"),
        replicate=replicate_index,
        kind=lambda wildcards: KIND_OF_FOLDER[wildcards.run_dir].name,
    script:
        "../scripts/train_sae.py"


# The baselines without relation slots: the same job; TopK's start file is the
# supervised SAE whose L0 sets its k (the others start fresh).
use rule train_stage2 as train_baseline with:
    input:
        activations=ACTIVATIONS,
        init=start_file_of_run,
    wildcard_constraints:
        run_dir=folders_pattern(BASELINES),


# Stage 1 (reconstruction only), shared by joint and separate_activation: one file.
use rule train_stage2 as train_stage1 with:
    input:
        activations=ACTIVATIONS,
    output:
        "results/{draw}{sweep}stage1/layer{layer}{replicate}/sae_stage1.pt",
    log:
        "results/{draw}{sweep}logs/stage1/layer{layer}{replicate}.log",
    benchmark:
        "results/{draw}{sweep}benchmarks/stage1/layer{layer}{replicate}.tsv"
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=6 * 60,
    params:
        config=draw_params("seed", "sae"),
        replicate=replicate_index,
        kind="stage1",
