# Residual-stream activations of every layer at each prompt's last token, into HDF5.


rule extract_activations:
    input:
        model=LM_DIR,
        prompts=PROMPTS,
    output:
        ACTIVATIONS,
    log:
        "results/{draw}logs/extract_activations.log",
    benchmark:
        "results/{draw}benchmarks/extract_activations.tsv"
    conda:
        CONDA_ENV
    # as the LM's: with several draws a job of two threads waits for both cores, so the
    # other core idles while the last draw's LM trains (7.5 minutes in a study run)
    threads: LM_THREADS
    resources:
        gpu=1,
        mem_mb=lm_mem_mb,
        runtime=4 * 60,
    params:
        config=sections(config, "activations", "data.relations"),
    script:
        "../scripts/extract_activations.py"
