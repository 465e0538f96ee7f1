# Prompts: the built-in synthetic biographies, or the user's own table.

if USER_PROMPTS:

    rule import_prompts:
        input:
            USER_PROMPTS,
        output:
            PROMPTS,
        log:
            "results/{draw}logs/import_prompts.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **SMALL_JOB,
        params:
            config=draw_params(
                "seed",
                "data.relations",
                "data.test_fraction",
                "data.validation_fraction",
            ),
        script:
            "../scripts/import_prompts.py"

else:

    rule biographies:
        output:
            people="results/{draw}data/people.csv",
            biographies=BIOGRAPHIES,
            prompts=PROMPTS,
        log:
            "results/{draw}logs/biographies.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
            gpu=0,
        params:
            config=draw_params(
                "seed",
                "data.n_people",
                "data.biographies_per_person",
                "data.test_fraction",
                "data.validation_fraction",
                "data.heldout_templates",
                "data.statement_wordings",
            ),
        script:
            "../scripts/make_biographies.py"
