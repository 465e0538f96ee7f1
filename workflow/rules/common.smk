# Paths and resources shared by the rules.

# One software environment for every rule (used with --sdm conda). Jobs import this
# repository's package; an environment built from that file has only the third-party
# packages, so src/ goes on PYTHONPATH, which jobs inherit. (With the package
# installed, as usual, this points at the same code.)
CONDA_ENV = "../envs/supervised-sae.yaml"
_paths = (str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH"))
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in _paths if p))

USER_PROMPTS = config["data"].get("prompts")
PRETRAINED_LM = config["lm"].get("pretrained")
PROMPTS = "results/data/prompts.csv"
BIOGRAPHIES = [] if USER_PROMPTS else "results/data/biographies.csv"
LM_DIR = PRETRAINED_LM if PRETRAINED_LM else "results/lm/model"
ACTIVATIONS = "results/activations/activations.h5"


def sae_mem_mb(wildcards=None, attempt=1):
    """Host memory of an SAE job: parameters, gradients and AdamW state (x5 with slack),
    plus one layer's activations as float32; more on each retry."""
    d = config["lm"]["n_embd"]
    params = 2 * d * (config["sae"]["n_free"] + 64)
    prompts = config["data"]["n_people"] * len(config["data"]["relations"]) * 5
    return int(1024 + attempt * (params * 4 * 5 + prompts * d * 4) / 2**20)
