# Paths and resources shared by the rules.

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
