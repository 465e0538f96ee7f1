"""One function per workflow step, taking the typed config and paths.

Snakemake scripts and the command-line interface both call these, so a rule and its
CLI command do exactly the same work (the reporting steps live in `report.steps`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae.atomic import write_json, write_table
from supervised_sae.config import StudyConfig, from_rule_params
from supervised_sae.config.spec import GENERATOR_SEEDS
from supervised_sae.data.biographies import build_dataset, load_pools
from supervised_sae.data.prompts import TABLE_COLUMNS, read_prompts
from supervised_sae.report.steps import (  # noqa: F401 (the reporting steps, re-exported)
    results_page,
    study_figures,
    summarize,
    sweep_figure,
    training_curves,
)
from supervised_sae.runs import BASELINES, run_kind

log = logging.getLogger("supervised_sae")


def setup_logging(log_path: str | Path | None = None) -> None:
    """Log to stderr and, when given, to a file (Snakemake's `log:`)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def make_data(config: StudyConfig, people_out: str | Path, biographies_out: str | Path,
              prompts_out: str | Path) -> None:
    """Synthetic people, biographies and prompts tables."""
    data = config.data
    people, bios, prompts = build_dataset(
        n_people=data.n_people, biographies_per_person=data.biographies_per_person,
        test_fraction=data.test_fraction, heldout_templates=data.heldout_templates,
        seed=config.seed, validation_fraction=data.validation_fraction,
        statement_wordings=data.statement_wordings)
    write_table(people_out, people)
    write_table(biographies_out, bios)
    write_table(prompts_out, prompts)
    log.info("%d people (%d train / %d test / %d validation), %d biographies, %d prompts "
             "(%d on held-out templates)", len(people), (people["split"] == "train").sum(),
             (people["split"] == "test").sum(), (people["split"] == "validation").sum(),
             len(bios), len(prompts), int(prompts["template_heldout"].sum()))


def import_prompts(config: StudyConfig, source: str | Path, prompts_out: str | Path) -> None:
    """Validate the user's own prompts table and write it in the workflow's format."""
    from supervised_sae.data.prompts import load_prompts

    table = load_prompts(source, config.data.relations, config.data.test_fraction,
                         config.seed, config.data.validation_fraction)
    write_table(prompts_out, table[list(TABLE_COLUMNS)])
    log.info("imported %d prompts from %s", len(table), source)


def read_biographies(path: str | Path | None) -> pd.DataFrame:
    if not path:
        return pd.DataFrame({"person": [], "copy": [], "text": []})
    return pd.read_csv(path, keep_default_na=False, dtype={"text": str})


def _job_device(config: StudyConfig, layer: int = 0, n_layers: int = 1):
    from supervised_sae.train.devices import select_device

    dev = config.devices
    lease = select_device(layer, n_layers, list(dev.ids) if isinstance(dev.ids, tuple)
                          else dev.ids, dev.lock_dir, dev.simulate)
    log.info("device: %s (%s); device_id=%s", lease.torch_device, lease.reason,
             lease.device_id or lease.torch_device)
    if lease.torch_device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            lease.release()
            raise ValueError(f"devices.ids={dev.ids!r}: this job was given GPU "
                             f"{lease.device_id}, but this PyTorch ({torch.__version__}) cannot "
                             "use CUDA; install a CUDA build of PyTorch, or set devices.ids: cpu")
    return lease


def train_language_model(config: StudyConfig, prompts_path: str | Path,
                         biographies_path: str | Path | None, model_out: str | Path,
                         checkpoint_dir: str | Path) -> None:
    """The LM rule: train the built-in GPT-2, or fine-tune `lm.pretrained` (lm.finetune)."""
    from supervised_sae.lm.fit import Schedule

    with _job_device(config) as lease:
        lm = config.lm
        bios = read_biographies(biographies_path)
        prompts = read_prompts(prompts_path)
        if not len(bios):
            log.warning("your own prompts without biographies: the LM trains on the QA of "
                        "train people only and never reads held-out people's facts, so its "
                        "answers (and any value accuracy) on held-out people measure "
                        "nothing; binding and slot accuracy still do. Give lm.pretrained "
                        "without lm.finetune for a model that knows them.")
        schedule = Schedule(lm.epochs, lm.batch_size, lm.lr, seed=config.seed)
        if lm.finetune:
            from supervised_sae.lm.finetune import finetune_lm

            finetune_lm(bios, prompts, lm.pretrained, model_out, checkpoint_dir, schedule,
                        lease.torch_device)
            return
        from supervised_sae.lm.train import train_lm

        # Built-in data: the pools' values are single tokens and dates stay month/day/year.
        # The user's own prompts: each distinct answer becomes one token.
        values = load_pools().attribute_values() if len(bios) else sorted(set(prompts["answer"]))
        train_lm(bios, prompts, values, model_out, checkpoint_dir, n_layer=lm.n_layer,
                 n_embd=lm.n_embd, n_head=lm.n_head, n_positions=lm.n_positions,
                 epochs=lm.epochs, batch_size=lm.batch_size, lr=lm.lr,
                 seed=config.seed, device=lease.torch_device, tokenizer=lm.tokenizer,
                 bpe_vocab_size=lm.bpe_vocab_size)


def lm_accuracy(config: StudyConfig, model_dir: str | Path, prompts_path: str | Path,
                out: str | Path) -> None:
    from supervised_sae.lm.describe import describe_lm
    from supervised_sae.lm.load import answer_accuracy, held_out_facts, load_lm

    with _job_device(config) as lease:
        model, tokenizer = load_lm(model_dir, lease.torch_device)
        result = answer_accuracy(model, tokenizer, read_prompts(prompts_path), lease.torch_device)
        result["model"] = str(model_dir)
        result["lm"] = describe_lm(model_dir)  # the page describes the model that ran
        result.update(held_out_facts(model_dir))
        write_json(out, result)
        if result["held_out_facts_read"] is False:
            log.warning("%s", result["held_out_note"])
        for k, v in result.items():
            if isinstance(v, dict) and "accuracy" in v:
                log.info("LM whole-answer accuracy, %s: %.3f (first token: %.3f, n=%d)", k,
                         v["accuracy"], v["first_token_accuracy"], v["n"])


def extract(config: StudyConfig, model_dir: str | Path, prompts_path: str | Path,
            out: str | Path) -> None:
    from supervised_sae.lm.extract import extract_activations

    with _job_device(config) as lease:
        act = config.activations
        extract_activations(model_dir, read_prompts(prompts_path,
                                                    relations=config.data.relations),
                            config.data.relations, out,
                            batch_size=act.batch_size, dtype=act.dtype,
                            device=lease.torch_device)


def train_sae(config: StudyConfig, activations: str | Path, layer: int, kind: str,
              out: str | Path, init: str | Path | None = None,
              model_dir: str | Path | None = None, replicate: int = 0) -> None:
    """kind: a run kind (`runs.RUN_KINDS`); out is sae_stage1.pt for stage1, else the
    run folder. model_dir: the LM, which a `lens` value head reads out through.
    replicate: which replicate SAE seed (`sae_seeds`); it trains with seed + replicate."""
    from supervised_sae.data.store_reader import file_layer_count
    from supervised_sae.train.stages import run_baseline, run_stage1, run_stage2

    run = run_kind(kind)
    # the seed this run trains with (its init adds the layer) names it: it must not wrap
    # around PyTorch's 32-bit generator onto another seed's tensors
    if replicate < 0 or config.seed + replicate + max(layer, 0) >= GENERATOR_SEEDS:
        raise ValueError(f"replicate={replicate}: a replicate SAE seed is 0 or more, and "
                         f"seed {config.seed} + replicate + layer {layer} must stay below "
                         f"2^32 (at most replicate "
                         f"{GENERATOR_SEEDS - 1 - config.seed - max(layer, 0)})")
    if run.init_from and init is None:
        raise ValueError(f"{kind} needs --init (the finished {run.init_from} SAE it "
                         "starts from)")
    with _job_device(config, layer, file_layer_count(activations)) as lease:
        device, sae, seed = lease.torch_device, config.sae, config.seed + replicate
        log.info("job start: %s layer %d on %s (SAE seed %d)", kind, layer, device, seed)
        if kind == "stage1":
            run_stage1(activations, layer, out, sae, seed, device)
        elif kind in BASELINES:
            run_baseline(kind, activations, layer, out, sae, seed, device, init)
        else:
            run_stage2(activations, layer, kind, init, out, sae, seed, device, model_dir)
        log.info("job end: %s layer %d on %s", kind, layer, device)


def evaluate(config: StudyConfig, sae_path: str | Path, activations: str | Path,
             prompts_path: str | Path, model_dir: str | Path, layer: int, out: str | Path,
             replicate: int = 0) -> None:
    """metrics.json of one run; replicate: its SAE seed's index (the published protocol
    runs on the first `evaluation.published_protocol_seeds` only)."""
    from supervised_sae.data.store_reader import file_layer_count
    from supervised_sae.evaluation.job import evaluate_sae

    with _job_device(config, layer, file_layer_count(activations)) as lease:
        ev = config.evaluation
        metrics = evaluate_sae(sae_path, activations, prompts_path, model_dir, layer,
                               settings=ev, device=lease.torch_device,
                               published=replicate < ev.published_protocol_seeds)
        write_json(out, metrics)
        test = metrics["slices"].get("test_seen", {})
        log.info("%s layer %d, held-out people: slot acc %.3f, binding %.3f, value acc %s, "
                 "FVU %.3f, best swap %.3f", metrics["mode"], layer, test.get("slot_accuracy", 0),
                 test.get("binding_accuracy", 0), test.get("value_accuracy", "n/a"),
                 test.get("fvu", 0), metrics["swap"].get("decoder", {}).get("best_success_rate", 0))


def probes(config: StudyConfig, activations: str | Path, layer: int, out: str | Path,
           model_dir: str | Path | None = None) -> None:
    """Linear probes of one layer, and the logit lens when the LM's folder is given."""
    from supervised_sae.data.store_reader import file_layer_count, load_layer
    from supervised_sae.evaluation.probes import layer_probes
    from supervised_sae.lm.load import load_readout

    with _job_device(config, layer, file_layer_count(activations)) as lease:
        data = load_layer(activations, layer, lease.torch_device)
        readout = (load_readout(model_dir, data).to(lease.torch_device)
                   if model_dir else None)
        result = layer_probes(data, config.evaluation.probe_steps, readout)
        write_json(out, result)
        log.info("layer %d, held-out people: relation probe %.3f, answer probe %.3f, logit "
                 "lens %s", layer, result["relation"].get("test_seen", 0),
                 result["answer"].get("test_seen", 0),
                 result.get("logit_lens", {}).get("test_seen", "n/a"))


def steering(config: StudyConfig, activations: str | Path, prompts_path: str | Path,
             model_dir: str | Path, layer: int, out: str | Path) -> None:
    """The baselines that are not SAEs at one layer (DiffMean, the probe direction, the
    one-position ceiling, the linear entity swap): steering.json."""
    from supervised_sae.data.store_reader import file_layer_count, load_layer
    from supervised_sae.evaluation.lm_side import open_lm_side
    from supervised_sae.evaluation.steering import steering_baselines

    ev = config.evaluation
    with _job_device(config, layer, file_layer_count(activations)) as lease:
        data = load_layer(activations, layer, lease.torch_device)
        side = open_lm_side(data, activations, prompts_path, model_dir, lease.torch_device)
        result = steering_baselines(data, side.runner, ev.swap_people, ev.steering_alphas,
                                    ev.probe_steps)
        write_json(out, result)
        swap = result["swap"]
        log.info("layer %d, held-out people: DiffMean swap %s, probe direction %s, ceiling "
                 "%s, linear entity swap cause %s", layer,
                 *(f"{swap[m]['best_success_rate']:.3f}" if m in swap else "n/a"
                   for m in ("diffmean", "probe_direction")),
                 f"{swap['ceiling']['success_rate']:.3f}" if "ceiling" in swap else "n/a",
                 f"{swap['entity']['cause']:.3f}" if swap.get("entity") else "n/a")


def slot_browser(sae_path: str | Path, activations: str | Path, prompts_path: str | Path,
                 model_dir: str | Path, layer: int, out: str | Path,
                 single_file: str | Path | None = None,
                 neuronpedia: str | Path | None = None) -> None:
    """The slot browser of one SAE at its layer (a static page folder); `single_file`:
    also the page in one file, for the Snakemake report; `neuronpedia`: also the slots in
    SAEDashboard's batch layout."""
    from supervised_sae.evaluation.slot_stats import browser_stats
    from supervised_sae.report.neuronpedia import write_neuronpedia
    from supervised_sae.report.slot_browser import write_browser

    stats, table, row_tokens = browser_stats(str(sae_path), str(activations),
                                             str(prompts_path), str(model_dir), layer)
    page = write_browser(stats, table, out, f"Slots of {sae_path}", single_file)
    log.info("slot browser: %s (%s)", page, stats["summary"])
    if neuronpedia is not None:
        write_neuronpedia(stats, row_tokens, neuronpedia, model_dir, sae_path, prompts_path)


def export_saelens(sae_path: str | Path, out: str | Path) -> None:
    """One trained SAE in SAELens's on-disk format."""
    from supervised_sae.sae.export import export_saelens as export

    export(sae_path, out)


def config_from_rule(snakemake: Any) -> StudyConfig:
    """A workflow job's config: exactly the sections its rule passes as `params.config`
    (so editing them is what reruns it), plus device placement. Placement never
    changes a result, so it is read from the workflow config and is no rerun trigger.
    Torch uses the rule's `threads`."""
    passed = dict(getattr(snakemake.params, "config", None) or {})
    passed["devices"] = snakemake.config["devices"]
    if getattr(snakemake, "threads", None):
        import torch

        # the rule's `threads`, not every core: jobs that run side by side share them
        torch.set_num_threads(int(snakemake.threads))
    return from_rule_params(passed)
