# The language model: trained here unless lm.pretrained names a local model folder.

if not PRETRAINED_LM:

    rule train_lm:
        input:
            prompts=PROMPTS,
            biographies=BIOGRAPHIES,
        output:
            directory(LM_DIR),
        log:
            "results/{draw}logs/train_lm.log",
        benchmark:
            "results/{draw}benchmarks/train_lm.tsv"
        conda:
            CONDA_ENV
        threads: LM_THREADS
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=24 * 60,
        params:
            config=draw_params("seed", "lm"),
            checkpoints="results/{draw}lm/checkpoints",
        script:
            "../scripts/train_lm.py"


rule lm_accuracy:
    input:
        model=LM_DIR,
        prompts=PROMPTS,
    output:
        LM_ACCURACY,
    log:
        "results/{draw}logs/lm_accuracy.log",
    benchmark:
        "results/{draw}benchmarks/lm_accuracy.tsv"
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/lm_accuracy.py"
