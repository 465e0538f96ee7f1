"""One function per workflow step, taking the config dict and paths.

Snakemake scripts and the command-line interface both call these, so a rule and its
CLI command do exactly the same work.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import write_json, write_table
from .biographies import RELATIONS, build_dataset, load_pools
from .prompts import TABLE_COLUMNS, read_prompts

log = logging.getLogger("supervised_sae")


def setup_logging(log_path: str | Path | None = None) -> None:
    """Log to stderr and, when given, to a file (Snakemake's `log:`)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def relations(config: dict[str, Any]) -> tuple[str, ...]:
    return tuple(config.get("data", {}).get("relations") or RELATIONS)


def make_data(config: dict[str, Any], people_out: str, biographies_out: str,
              prompts_out: str) -> None:
    """Synthetic people, biographies and prompts tables."""
    data = config["data"]
    people, bios, prompts = build_dataset(
        n_people=data["n_people"], biographies_per_person=data["biographies_per_person"],
        test_fraction=data["test_fraction"], heldout_templates=data["heldout_templates"],
        seed=config["seed"])
    write_table(people_out, people)
    write_table(biographies_out, bios)
    write_table(prompts_out, prompts)
    log.info("%d people (%d train / %d test), %d biographies, %d prompts (%d on held-out "
             "templates)", len(people), (people["split"] == "train").sum(),
             (people["split"] == "test").sum(), len(bios), len(prompts),
             int(prompts["template_heldout"].sum()))


def import_prompts(config: dict[str, Any], source: str, prompts_out: str) -> None:
    """Validate the user's own prompts table and write it in the workflow's format."""
    from .prompts import load_prompts

    table = load_prompts(source, relations(config), config["data"]["test_fraction"],
                         config["seed"])
    write_table(prompts_out, table[list(TABLE_COLUMNS)])
    log.info("imported %d prompts from %s", len(table), source)


def read_biographies(path: str | Path | None) -> pd.DataFrame:
    if not path:
        return pd.DataFrame({"person": [], "copy": [], "text": []})
    return pd.read_csv(path, keep_default_na=False)


def _job_device(config: dict[str, Any], layer: int = 0, n_layers: int = 1):
    from .devices import select_device

    dev = config.get("devices", {})
    lease = select_device(layer, n_layers, dev.get("ids", "auto"),
                          dev.get("lock_dir", ".snakemake/device-locks"),
                          bool(dev.get("simulate", False)))
    log.info("device: %s (%s); device_id=%s", lease.torch_device, lease.reason,
             lease.device_id or lease.torch_device)
    return lease


def train_language_model(config: dict[str, Any], prompts_path: str,
                         biographies_path: str | None, model_out: str,
                         checkpoint_dir: str) -> None:
    from .lm import train_lm

    with _job_device(config) as lease:
        lm = config["lm"]
        bios = read_biographies(biographies_path)
        prompts = read_prompts(prompts_path)
        # Built-in data: the pools' values are single tokens and dates stay month/day/year.
        # The user's own prompts: each distinct answer becomes one token.
        values = load_pools().attribute_values() if len(bios) else sorted(set(prompts["answer"]))
        train_lm(bios, prompts, values, model_out, checkpoint_dir, n_layer=lm["n_layer"],
                 n_embd=lm["n_embd"], n_head=lm["n_head"], n_positions=lm["n_positions"],
                 epochs=lm["epochs"], batch_size=lm["batch_size"], lr=lm["lr"],
                 seed=config["seed"], device=lease.torch_device)


def lm_accuracy(config: dict[str, Any], model_dir: str, prompts_path: str, out: str) -> None:
    from .lm import answer_accuracy, load_lm

    with _job_device(config) as lease:
        model, tokenizer = load_lm(model_dir, lease.torch_device)
        result = answer_accuracy(model, tokenizer, read_prompts(prompts_path), lease.torch_device)
        result["model"] = str(model_dir)
        write_json(out, result)
        for k, v in result.items():
            if isinstance(v, dict):
                log.info("LM first-answer-token accuracy, %s: %.3f (n=%d)", k, v["accuracy"],
                         v["n"])


def extract(config: dict[str, Any], model_dir: str, prompts_path: str, out: str) -> None:
    from .activations import extract_activations

    with _job_device(config) as lease:
        act = config["activations"]
        extract_activations(model_dir, read_prompts(prompts_path), relations(config), out,
                            batch_size=act["batch_size"], dtype=act["dtype"],
                            device=lease.torch_device)


def train_sae(config: dict[str, Any], activations: str, layer: int, stage: str,
              out: str, init: str | None = None) -> None:
    """stage: "stage1" (out = sae_stage1.pt), a mode or "unsupervised" (out = run folder)."""
    import h5py

    from .training import TrainSettings, run_stage1, run_stage2, run_unsupervised

    with h5py.File(activations, "r") as f:
        n_layers = int(f.attrs["n_layers"])
    with _job_device(config, layer, n_layers) as lease:
        settings = TrainSettings.from_config(config["sae"], seed=config["seed"])
        log.info("job start: %s layer %d on %s", stage, layer, lease.torch_device)
        if stage == "stage1":
            run_stage1(activations, layer, out, settings, lease.torch_device)
        elif stage == "unsupervised":
            run_unsupervised(activations, layer, out, settings, lease.torch_device)
        else:
            if init is None:
                raise ValueError(f"mode {stage} needs --init (the SAE it starts from)")
            run_stage2(activations, layer, stage, init, out, settings, lease.torch_device)
        log.info("job end: %s layer %d on %s", stage, layer, lease.torch_device)


def model_depth(config: dict[str, Any]) -> int:
    """Number of transformer blocks of the LM the workflow will use."""
    pretrained = config["lm"].get("pretrained")
    if not pretrained:
        return int(config["lm"]["n_layer"])
    cfg_path = Path(pretrained) / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"lm.pretrained={pretrained!r}: no config.json there; expected a "
                         "local Hugging Face model folder (save_pretrained)")
    import json

    hf = json.loads(cfg_path.read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in hf:
            return int(hf[key])
    raise ValueError(f"{cfg_path}: no num_hidden_layers / n_layer key; cannot tell its depth")


def selected_layers(config: dict[str, Any]) -> list[int]:
    """The config's `layers`, checked against the model's depth."""
    depth = model_depth(config)
    layers = config.get("layers", "all")
    if layers == "all":
        return list(range(depth))
    bad = [x for x in layers if not 0 <= int(x) < depth]
    if bad:
        raise ValueError(f"config layers {bad} are outside the model's depth: it has "
                         f"layers 0..{depth - 1}")
    return [int(x) for x in layers]


def evaluate(config: dict[str, Any], sae_path: str, activations: str, prompts_path: str,
             model_dir: str, layer: int, out: str) -> None:
    from .evaluation import evaluate_sae

    with _job_device(config, layer, model_depth(config)) as lease:
        ev = config["evaluation"]
        metrics = evaluate_sae(sae_path, activations, prompts_path, model_dir, layer,
                               alphas=ev["alphas"],
                               swap_prompts_per_relation=ev["swap_prompts_per_relation"],
                               lm_prompts_per_slice=ev["lm_prompts_per_slice"],
                               rho_rows=ev["rho_rows"], device=lease.torch_device)
        write_json(out, metrics)
        test = metrics["slices"].get("test_seen", {})
        log.info("%s layer %d, held-out people: slot acc %.3f, binding %.3f, value acc %s, "
                 "FVU %.3f, best swap %.3f", metrics["mode"], layer, test.get("slot_accuracy", 0),
                 test.get("binding_accuracy", 0), test.get("value_accuracy", "n/a"),
                 test.get("fvu", 0), metrics["swap"].get("decoder", {}).get("best_success_rate", 0))


def probes(config: dict[str, Any], activations: str, layer: int, out: str) -> None:
    from .probes import layer_probes
    from .training import load_layer

    with _job_device(config, layer, model_depth(config)) as lease:
        result = layer_probes(load_layer(activations, layer, lease.torch_device),
                              config["evaluation"]["probe_steps"])
        write_json(out, result)
        log.info("layer %d probes, held-out people: relation %.3f, answer %.3f", layer,
                 result["relation"].get("test_seen", 0), result["answer"].get("test_seen", 0))
