# SAE training: stage 1 per layer (shared), stage 2 per mode and layer, and the
# baselines without relation slots (unsupervised, TopK). Checkpoints live in checkpoints/ beside the outputs (not
# declared), so a killed job resumes there instead of starting over; their identity
# covers every setting and input that changes the result.
wildcard_constraints:
    layer=LAYER_PATTERN,
    replicate=REPLICATE_PATTERN,


rule train_stage1:
    input:
        activations=ACTIVATIONS,
    output:
        "results/stage1/layer{layer}{replicate}/sae_stage1.pt",
    log:
        "results/logs/stage1/layer{layer}{replicate}.log",
    benchmark:
        "results/benchmarks/stage1/layer{layer}{replicate}.tsv"
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=6 * 60,
    params:
        config=sections(config, "seed", "sae"),
        replicate=replicate_index,
        kind="stage1",
    script:
        "../scripts/train_sae.py"


rule train_stage2:
    input:
        activations=ACTIVATIONS,
        init=init_file,
        model=LM_DIR,  # the lens value head reads out through the LM's unembedding
    output:
        model="results/{mode_dir}/layer{layer}{replicate}/sae_final.pt",
        history="results/{mode_dir}/layer{layer}{replicate}/training_history.json",
    log:
        "results/logs/{mode_dir}/layer{layer}{replicate}.log",
    benchmark:
        "results/benchmarks/{mode_dir}/layer{layer}{replicate}.tsv"
    wildcard_constraints:
        mode_dir=folders_pattern(ALL_MODES),
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=12 * 60,
    params:
        config=sections(config, "seed", "sae"),
        replicate=replicate_index,
        kind=lambda wildcards: KIND_OF_FOLDER[wildcards.mode_dir].name,
    script:
        "../scripts/train_sae.py"


rule train_baseline:
    input:
        activations=ACTIVATIONS,
        init=l0_reference,
    output:
        model="results/{baseline}/layer{layer}{replicate}/sae_final.pt",
        history="results/{baseline}/layer{layer}{replicate}/training_history.json",
    log:
        "results/logs/{baseline}/layer{layer}{replicate}.log",
    benchmark:
        "results/benchmarks/{baseline}/layer{layer}{replicate}.tsv"
    wildcard_constraints:
        baseline=folders_pattern(BASELINES),
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=12 * 60,
    params:
        config=sections(config, "seed", "sae"),
        replicate=replicate_index,
        kind=lambda wildcards: KIND_OF_FOLDER[wildcards.baseline].name,
    script:
        "../scripts/train_sae.py"
