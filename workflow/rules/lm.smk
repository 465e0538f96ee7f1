# The language model: trained here, fine-tuned here from lm.pretrained (lm.finetune), or
# lm.pretrained as it is.

if LM_BUILT_HERE:

    rule train_lm:
        input:
            prompts=PROMPTS,
            biographies=BIOGRAPHIES,
            pretrained=PRETRAINED_LM or [],
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
            mem_mb=lm_training_mem_mb,
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
        report(
            LM_ACCURACY,
            caption="../report/language_model.rst",
            category="Language model",
        ),
    log:
        "results/{draw}logs/lm_accuracy.log",
    benchmark:
        "results/{draw}benchmarks/lm_accuracy.tsv"
    conda:
        CONDA_ENV
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=lm_mem_mb,
        runtime=60,
    script:
        "../scripts/lm_accuracy.py"
