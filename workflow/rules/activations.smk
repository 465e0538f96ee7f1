# Residual-stream activations of every layer at each prompt's last token, into HDF5.


rule extract_activations:
    input:
        model=LM_DIR,
        prompts=PROMPTS,
    output:
        ACTIVATIONS,
    benchmark:
        "results/benchmarks/extract_activations.tsv"
    log:
        "results/logs/extract_activations.log",
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=4 * 60,
    threads: 2
    script:
        "../scripts/extract_activations.py"
