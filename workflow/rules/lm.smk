# The language model: trained here unless lm.pretrained names a local model folder.

if not PRETRAINED_LM:

    rule train_lm:
        input:
            prompts=PROMPTS,
            biographies=BIOGRAPHIES,
        output:
            directory(LM_DIR),
        params:
            checkpoints="results/lm/checkpoints",
        benchmark:
            "results/benchmarks/train_lm.tsv"
        log:
            "results/logs/train_lm.log",
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=24 * 60,
        threads: 2
        script:
            "../scripts/train_lm.py"


rule lm_accuracy:
    input:
        model=LM_DIR,
        prompts=PROMPTS,
    output:
        "results/lm/accuracy.json",
    log:
        "results/logs/lm_accuracy.log",
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    threads: 2
    script:
        "../scripts/lm_accuracy.py"
