# Paths, targets and resources shared by the rules.

# One software environment for every rule (used with --sdm conda). Jobs import this
# repository's package; an environment built from that file has only the third-party
# packages, so src/ goes on PYTHONPATH, which jobs inherit. (With the package
# installed, as usual, this points at the same code.)
CONDA_ENV = "../envs/supervised-sae.yaml"
_paths = (str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH"))
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in _paths if p))

USER_PROMPTS = STUDY.data.prompts
PRETRAINED_LM = STUDY.lm.pretrained
# the LM folder the study reads: trained or fine-tuned here, or the pretrained one as it is
LM_BUILT_HERE = not PRETRAINED_LM or STUDY.lm.finetune
# a draw's files: {draw} is "" for draw 0 (results/...), "draw{d}/" for draw d >= 1
PROMPTS = "results/{draw}data/prompts.csv"
BIOGRAPHIES = [] if USER_PROMPTS else "results/{draw}data/biographies.csv"
LM_DIR = "results/{draw}lm/model" if LM_BUILT_HERE else PRETRAINED_LM
ACTIVATIONS = "results/{draw}activations/activations.h5"
LM_ACCURACY = "results/{draw}lm/accuracy.json"
PROBES = "results/{draw}baselines/layer{layer}/probes.json"
STEERING = "results/{draw}baselines/layer{layer}/steering.json"
EVALUATED_FOLDERS = folders_pattern(EVALUATED)  # wildcard constraint of run_dir
# the resources of a short CPU job (tables, plots, pages): no GPU, small memory
SMALL_JOB = dict(mem_mb=2000, runtime=10, gpu=0)
# Torch threads of a job (jobs honour `threads`). On a CPU two jobs of one thread each
# outrun one job of two threads (2 cores: evaluations +15%, LMs +24%; bench/RESULTS.md),
# so jobs ask for one; the LM and the extraction ask for two when they are alone (one
# draw: every job waits for them). GPU jobs are bounded by `gpu`, not by threads.
JOB_THREADS = 1
LM_THREADS = 1 if len(DRAWS) > 1 else 2


def run_files(kinds, layers, names, replicates=None, draws=None):
    """results/{draw}{kind's folder}/layer{L}{replicate}/{name} for every combination
    (every draw and replicate seed unless `draws` or `replicates` names some)."""
    return expand(
        "results/{draw}{run_dir}/layer{layer}{replicate}/{name}",
        draw=DRAWS if draws is None else draws,
        run_dir=[folder_of(k) for k in kinds],
        layer=layers,
        replicate=REPLICATES if replicates is None else replicates,
        name=names,
    )


def sweep_files(names):
    """results/sweep/{key}={value}/{kind's folder}/layer{L}{replicate}/{name} of every
    swept run (the first draw, every SAE seed of the sweep), and the main study's runs
    at the swept layer of the first draw with the sweep's seeds beyond the study's: its
    own value's point of the fronts gets the same spread."""
    if not SWEEPS:
        return []
    swept = expand(
        "results/{sweep}{run_dir}/layer{layer}{replicate}/{name}",
        sweep=SWEEPS,
        run_dir=[folder_of(k) for k in SWEPT],
        layer=SWEEP_LAYER,
        replicate=SWEEP_REPLICATES,
        name=names,
    )
    extra = SWEEP_REPLICATES[len(REPLICATES) :]
    main_point = run_files(SWEPT, [SWEEP_LAYER], names, extra, [""]) if extra else []
    return swept + main_point


def reproduction_files(names):
    """results/reproduction/{kind's folder}/layer{L}{replicate}/{name} of the reproduction
    row's runs (the first draw, every SAE seed); none without `reproduction.layer`."""
    if REPRODUCTION_LAYER is None:
        return []
    return expand(
        "results/{prefix}{run_dir}/layer{layer}{replicate}/{name}",
        prefix=REPRODUCTION_PREFIX,
        run_dir=[folder_of(k) for k in REPRODUCTION_MODES],
        layer=REPRODUCTION_LAYER,
        replicate=REPLICATES,
        name=names,
    )


def draw_params(*keys):
    """`params: config=` for jobs whose outputs belong to one draw: the config's
    `sections` with the draw's seed (seed + d), and the `sae` settings of a sweep point
    or of the reproduction row."""

    def of_draw(wildcards):
        overrides = sae_overrides(getattr(wildcards, "sweep", ""))
        return draw_sections(config, draw_of(wildcards.draw), *keys, sae=overrides)

    return of_draw


def slot_browsers():
    """The joint SAEs' slot browsers: every layer of draw 0, first SAE seed."""
    return run_files(
        [k for k in EVALUATED if k == "joint"],
        LAYERS,
        ["slot_browser", "slot_browser.html"],
        REPLICATES[:1],
        DRAWS[:1],
    )


def final_targets():
    """What `snakemake` builds by default: every run, its evaluation and the figures."""
    return [
        *expand(LM_ACCURACY, draw=DRAWS),
        *run_files(EVALUATED, LAYERS, ["sae_final.pt", "training_history.json"]),
        *run_files(
            EVALUATED, LAYERS, ["metrics.json", "training_curves.png", "saelens"]
        ),
        *sweep_files(["metrics.json"]),
        *reproduction_files(["metrics.json"]),
        *slot_browsers(),
        "results/summary/metrics.csv",
        *study_figure_paths().values(),
        *([f"{FIGURES_FOLDER}/{SWEEP_FIGURE}"] if SWEEPS else []),
        *([STUDY.results_page] if STUDY.results_page else []),
    ]


def start_file_of_run(wildcards):
    """The finished SAE a run starts from (stage 1's, or another mode's), or for an
    L0-matched TopK baseline the supervised SAE whose L0 sets its k; none for the others.
    """
    kind = KIND_OF_FOLDER[wildcards.run_dir].name
    start = start_file(
        kind,
        MODES,
        wildcards.layer,
        wildcards.replicate,
        STUDY.sae.encoder,
        wildcards.draw + wildcards.sweep,
    )
    return start or []


def replicate_index(wildcards):
    """The replicate SAE seed a training job runs (it trains with seed + replicate)."""
    return replicate_of(wildcards.replicate)


def sae_mem_mb(wildcards=None, attempt=1):
    """Host memory of an SAE job (see `config.implied.sae_job_memory_mb`)."""
    return sae_job_memory_mb(STUDY, attempt)


def sae_lm_mem_mb(wildcards=None, attempt=1):
    """Host memory of an SAE job that also loads the LM (stage 2, evaluation)."""
    return sae_job_memory_mb(STUDY, attempt) + attempt * lm_memory_mb(
        STUDY.lm, "inference"
    )


def lm_mem_mb(wildcards=None, attempt=1):
    """Host memory of a job that loads the LM (see `config.memory`)."""
    return lm_job_memory_mb(STUDY, "inference", attempt)


def lm_training_mem_mb(wildcards=None, attempt=1):
    """Host memory of the LM rule: weights, gradients and AdamW state."""
    return lm_job_memory_mb(STUDY, "training", attempt)


# The run's --cores as the main process has it: a job reads this file again in a process
# of its own, given its threads as --cores, and inherits the variable (a dry run or
# --report sets no cores)
try:
    os.environ.setdefault("SUPERVISED_SAE_RUN_CORES", str(workflow.cores))
except WorkflowError:
    pass


def study_command():
    """The command line that runs this study, as the results page shows it."""
    files = [f for f in workflow.configfiles if Path(f).name != "config.yaml"]
    configs = "".join(f" --configfile {os.path.relpath(f)}" for f in files)
    cores = os.environ.get("SUPERVISED_SAE_RUN_CORES") or workflow.cores
    return f"snakemake --cores {cores}{configs}"


def results_page_notes():
    """The hand-written reading beside the results page, when there is one: an input,
    so editing it rewrites the page."""
    notes = STUDY.results_notes
    return [str(notes)] if notes and notes.is_file() else []


def results_targets():
    """The results page's targets file: as given, or (a relative path that is not in the
    working directory) the one shipped beside this workflow's configs."""
    path = Path(STUDY.results_targets)
    return str(path if path.is_absolute() or path.exists() else workflow.basedir / path)


# the targets file is checked with the config, before any job: a typo in it would
# otherwise surface at the study's last job, or drop a target from the page
if STUDY.results_page:
    read_targets(results_targets())


# the user's own files that config keys name are never at, inside or above what the
# workflow writes (its prompts table, the LM it builds, the page and its figures)
refuse_outputs_over_inputs(
    {
        key: path
        for key, path in (
            ("data.prompts", USER_PROMPTS),
            ("lm.pretrained", PRETRAINED_LM),
            ("results_targets", results_targets() if STUDY.results_page else None),
        )
        if path
    },
    {
        **{
            f"draw {d}'s prompts table": p
            for d, p in enumerate(expand(PROMPTS, draw=DRAWS))
        },
        **(
            {f"draw {d}'s LM": p for d, p in enumerate(expand(LM_DIR, draw=DRAWS))}
            if LM_BUILT_HERE
            else {}
        ),
        **(
            {
                "results_page": STUDY.results_page,
                "the page's figure folder": str(
                    Path(STUDY.results_page).with_suffix("")
                ),
            }
            if STUDY.results_page
            else {}
        ),
    },
)
