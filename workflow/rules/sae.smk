# SAE training: stage 1 per layer (shared), stage 2 per mode and layer.
# Checkpoints live in checkpoints/ beside the outputs (not declared), so a killed job
# resumes there instead of starting over.


wildcard_constraints:
    layer=r"\d+",


rule train_stage1:
    input:
        ACTIVATIONS,
    output:
        "results/stage1/layer{layer}/sae_stage1.pt",
    log:
        "results/logs/stage1/layer{layer}.log",
    benchmark:
        "results/benchmarks/stage1/layer{layer}.tsv"
    retries: 1  # a retried job resumes from its checkpoint
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=sae_mem_mb,
        runtime=6 * 60,
    script:
        "../scripts/train_sae.py"


rule train_stage2:
    input:
        activations=ACTIVATIONS,
        init="results/stage1/layer{layer}/sae_stage1.pt",
    output:
        model="results/{mode_dir}/layer{layer}/sae_final.pt",
        history="results/{mode_dir}/layer{layer}/training_history.json",
    log:
        "results/logs/{mode_dir}/layer{layer}.log",
    benchmark:
        "results/benchmarks/{mode_dir}/layer{layer}.tsv"
    wildcard_constraints:
        mode_dir="joint|feature_activation",
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


rule train_separate_value:
    input:
        activations=ACTIVATIONS,
        init="results/feature_activation/layer{layer}/sae_final.pt",
    output:
        model="results/next_token_prediction/layer{layer}/sae_final.pt",
        history="results/next_token_prediction/layer{layer}/training_history.json",
    log:
        "results/logs/next_token_prediction/layer{layer}.log",
    benchmark:
        "results/benchmarks/next_token_prediction/layer{layer}.tsv"
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
