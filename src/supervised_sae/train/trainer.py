"""Stage-1 and stage-2 training of the supervised SAE, resumable and deterministic.

The layer's data lives on the device; each epoch's order is a permutation drawn from a
generator seeded by (seed, stage, epoch), so a resumed run sees the same batches as an
uninterrupted one. Per-step losses stay on the device and are read once per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from supervised_sae import __version__
from supervised_sae.atomic import write_json
from supervised_sae.backend import configure_backend
from supervised_sae.checkpoints import CheckpointStore, exclusive_run, file_sha256, tensors_sha256
from supervised_sae.config import SaeConfig
from supervised_sae.data.cross_checks import check_sae_fits_layer
from supervised_sae.data.store_reader import LayerData, load_layer
from supervised_sae.runs import COMPONENTS, MODES, RUN_KINDS, run_kind
from supervised_sae.sae.losses import LossSettings, sae_losses
from supervised_sae.sae.model import SupervisedSAE, decided_slot, load_sae, save_sae

log = logging.getLogger(__name__)

DIAGNOSTICS = ("indep_per_pair", "indep_excess")


def run_identity(kind: str, data: LayerData, settings: SaeConfig, seed: int,
                 init_sha256: str | None = None) -> dict[str, Any]:
    """Everything that changes a run's tensors: its checkpoints' identity."""
    return {"kind": kind, "layer": data.layer, "seed": seed,
            "sae": settings.result_identity(), "activations_sha256": data.fingerprint,
            "n_relations": len(data.relation_names), "n_answers": len(data.answer_tokens),
            "init_sha256": init_sha256}


class NonFiniteLossError(FloatingPointError):
    pass


@torch.no_grad()
def evaluate_accuracy(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                      with_values: bool, chunk: int = 1024) -> dict[str, float]:
    """Slot accuracy (argmax of relation slots) and value accuracy on some rows."""
    if len(rows) == 0:
        return {}
    slot_hits = torch.zeros((), device=data.x.device)
    value_hits = torch.zeros((), device=data.x.device)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        out = model(data.x[idx], with_values=with_values)
        slot_hits += (decided_slot(out["z"][:, model.n_free :]) == data.relation[idx]).sum()
        if with_values:
            value_hits += (out["logits"].argmax(1) == data.answer[idx]).sum()
    result = {"slot_accuracy": float(slot_hits) / len(rows)}
    if with_values:
        result["value_accuracy"] = float(value_hits) / len(rows)
    return result


def make_optimizer(params: list[torch.nn.Parameter], settings: SaeConfig
                   ) -> torch.optim.AdamW:
    # fused: one pass over parameter, gradient and both moments, on CUDA and (since
    # torch 2.4) on CPU, where the default per-tensor loop is ~3.5x slower
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                             fused=True)


def owned_parameters(model: SupervisedSAE, stage: str) -> list[torch.nn.Parameter]:
    """What a stage trains; only these get gradients, the rest stay bitwise unchanged."""
    kind = run_kind(stage)
    if kind.trains_values_only:
        return model.value_parameters()
    values = model.value_parameters() if "value" in kind.components else []
    return model.encoder_decoder_parameters() + values


def train_only_owned(model: SupervisedSAE, stage: str) -> list[torch.nn.Parameter]:
    """Turn gradients on for the stage's parameters only; return those parameters."""
    params = owned_parameters(model, stage)
    owned = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)
    return params


def logged_components(stage: str, losses: LossSettings, n_free: int,
                      value_head: str | None = None) -> list[str]:
    """Loss components (and indep diagnostics) a stage computes, in a fixed order."""
    components = run_kind(stage).components
    logged = [c for c in COMPONENTS if c in components]
    if "value" in components and value_head == "lens":
        logged.append("lens_prior")
    if "indep" in components and losses.indep_enabled(n_free):
        return logged + list(DIAGNOSTICS)
    return [c for c in logged if c != "indep"]


def epochs_of(kind: str, settings: SaeConfig) -> int:
    return sum(getattr(settings, key) for key in run_kind(kind).epochs)


def train_stage(model: SupervisedSAE, data: LayerData, stage: str, settings: SaeConfig,
                seed: int, checkpoint_dir: str | Path, identity: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """Train `model` in place as run kind `stage`; return its history.

    Only the parameters the stage owns are given to the optimizer, so the others stay
    bitwise unchanged. Resumes from the newest checkpoint in checkpoint_dir whose
    identity (`run_identity`) equals this run's; others are set aside.
    """
    with exclusive_run(checkpoint_dir):
        return _train_stage(model, data, stage, settings, seed, checkpoint_dir, identity)


def _train_stage(model: SupervisedSAE, data: LayerData, stage: str, settings: SaeConfig,
                 seed: int, checkpoint_dir: str | Path, identity: dict[str, Any]
                 ) -> list[dict[str, Any]]:
    kind = run_kind(stage)
    epochs = epochs_of(stage, settings)
    device = data.x.device
    configure_backend(device, settings.tf32)
    components = kind.components
    owns_values = "value" in components
    params = train_only_owned(model, stage)
    optimizer = make_optimizer(params, settings)
    losses = LossSettings.from_config(settings)
    slices = data.slices()
    train_rows = slices["train_seen"]
    n_train = len(train_rows)
    if n_train == 0:
        raise ValueError("no training rows (train people, seen templates) in the activations")
    # runs with labels keep the epoch that scores best on validation people (held out of
    # the LM's QA training like test people, and never reported)
    validation_rows = data.validation_rows() if kind.relation_slots else train_rows[:0]
    choose_epoch = len(validation_rows) > 0 and ("align" in components or owns_values)
    best: dict[str, Any] | None = None
    batch = settings.batch_size
    steps = math.ceil(n_train / batch)
    logged = logged_components(stage, losses, model.n_free, model.value_head)
    store = CheckpointStore(checkpoint_dir, keep=settings.keep_checkpoints,
                            identity={**identity, **model.shape_metadata()})
    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = store.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        best = state.get("best")
        start_epoch = int(state["epoch"]) + 1
        log.info("%s: resumed from %s (%d/%d epochs done)", stage, store.latest_path(),
                 start_epoch, epochs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    step_fn = make_step(model, optimizer, components, losses, logged, autocast,
                        relation_slots=kind.relation_slots)
    if settings.compile:
        step_fn = torch.compile(step_fn)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(
            seed * 1_000_003 + kind.seed_offset * 10_007 + epoch)
        order = train_rows[torch.randperm(n_train, generator=gen).to(device)]
        step_log = torch.zeros(steps, len(logged) + 3, device=device)
        for step in tqdm(range(steps), desc=f"{stage} epoch {epoch + 1}/{epochs}",
                         leave=False, mininterval=2, disable=steps < 50):
            idx = order[step * batch : (step + 1) * batch]
            step_log[step] = step_fn(data.x[idx], data.relation[idx], data.answer[idx])
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        record = _epoch_record(stage, epoch, step_log.cpu(), logged, steps, n_train, elapsed)
        if not kind.relation_slots:
            del record["slot_accuracy"]
        elif (epoch + 1) % settings.eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            record["eval"] = {name: evaluate_accuracy(model, data, rows, owns_values)
                              for name, rows in slices.items()}
            model.train()
        if choose_epoch:
            model.eval()
            scores = evaluate_accuracy(model, data, validation_rows, owns_values)
            model.train()
            trained = [scores["slot_accuracy"]] if "align" in components else []
            trained += [scores["value_accuracy"]] if owns_values else []
            record["validation"] = {**scores, "score": sum(trained) / len(trained)}
            # ties keep the later epoch: an earlier one must be strictly better
            if best is None or record["validation"]["score"] >= best["score"]:
                best = {"epoch": epoch, "score": record["validation"]["score"],
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        history.append(record)
        log.info("%s epoch %d/%d: total %.4g  %s  slot acc %.3f%s  (%.1fs, %.0f ex/s)", stage,
                 epoch + 1, epochs, record["total"],
                 " ".join(f"{k} {v:.4g}" for k, v in record["losses"].items()),
                 record.get("slot_accuracy", float("nan")),
                 f"  value acc {record['value_accuracy']:.3f}" if owns_values else "",
                 elapsed, record["examples_per_s"])
        if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == epochs:
            store.save(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "torch_rng": torch.get_rng_state(), "epoch": epoch,
                               "history": history, "best": best})
    if best is not None and history:
        history[-1]["chosen_epoch"] = best["epoch"] + 1
        if best["epoch"] != epochs - 1:
            model.load_state_dict(best["model"])
        log.info("%s: keeping epoch %d of %d, the best on %d validation rows (score %.3f; "
                 "last epoch %.3f)", stage, best["epoch"] + 1, epochs, len(validation_rows),
                 best["score"], history[-1]["validation"]["score"])
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def make_step(model, optimizer, components, loss_settings, logged, autocast,
              relation_slots: bool = True):
    """One optimisation step; returns a device tensor row: logged parts, total, accuracies."""
    n_free = model.n_free
    with_values = "value" in components
    # the lens head's distance from the LM's read-out: a penalty on parameters, not on
    # the batch, so it is added here rather than computed in every forward
    lens_prior = with_values and model.value_head == "lens"

    def step(x, relation, answer):
        with autocast:
            out = model(x, with_values=with_values, relation_slots=relation_slots)
            total, parts = sae_losses(out, x, relation, answer, n_free, components,
                                      loss_settings)
            if lens_prior:
                parts["lens_prior"] = model.lens_prior()
                total = total + loss_settings.lens_prior * parts["lens_prior"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        model.normalize_decoder()
        with torch.no_grad():
            slot_acc = ((decided_slot(out["z"][:, n_free:]) == relation).float().mean()
                        if model.n_relations else torch.zeros((), device=x.device))
            value_acc = ((out["logits"].argmax(1) == answer).float().mean() if with_values
                         else torch.zeros((), device=x.device))
            return torch.stack([parts[k].detach().float() for k in logged]
                               + [total.detach().float(), slot_acc, value_acc])

    return step


def _epoch_record(stage: str, epoch: int, step_log: torch.Tensor, logged: list[str],
                  steps: int, n_train: int, elapsed: float) -> dict[str, Any]:
    finite = torch.isfinite(step_log[:, : len(logged) + 1])
    if not bool(finite.all()):
        bad_step, bad_col = (~finite).nonzero()[0].tolist()
        name = (logged + ["total"])[bad_col]
        raise NonFiniteLossError(
            f"non-finite loss in {stage}, epoch {epoch + 1}, step {bad_step + 1}: component "
            f"{name!r} = {step_log[bad_step, bad_col].item()}")
    means = step_log.mean(0).tolist()
    record = {"stage": stage, "epoch": epoch + 1,
              "losses": {k: means[i] for i, k in enumerate(logged) if k not in DIAGNOSTICS},
              "total": means[len(logged)],
              "slot_accuracy": means[len(logged) + 1],
              "epoch_time_s": elapsed, "examples_per_s": n_train / max(elapsed, 1e-9)}
    if "value" in logged:
        record["value_accuracy"] = means[len(logged) + 2]
    diagnostics = {k: means[i] for i, k in enumerate(logged) if k in DIAGNOSTICS}
    if diagnostics:
        record["indep_diagnostics"] = diagnostics
    return record


def _run_metadata(data: LayerData, settings: SaeConfig, seed: int, stage: str,
                  activations: str | Path, device: str) -> dict[str, Any]:
    return {"layer": data.layer, "n_layers": data.n_layers, "stage": stage,
            "mode": None if stage == "stage1" else stage,
            "relation_names": list(data.relation_names),
            "answer_tokens": list(data.answer_tokens),
            "settings": {**dataclasses.asdict(settings), "seed": seed},
            "activations": str(activations), "activations_sha256": data.fingerprint,
            "device": device, "package_version": __version__,
            "torch_version": str(torch.__version__)}


def new_sae(data: LayerData, settings: SaeConfig, seed: int, relation_slots: bool = True
            ) -> SupervisedSAE:
    """A freshly initialised SAE for this layer's data."""
    n_relations = len(data.relation_names) if relation_slots else 0
    return SupervisedSAE(data.d_model, settings.n_free, n_relations,
                         len(data.answer_tokens) if relation_slots else 1,
                         value_head=settings.value_head,
                         slot_only_hidden=settings.slot_only_hidden,
                         decoder_norm=settings.decoder_norm, seed=seed + data.layer)


def run_stage1(activations: str | Path, layer: int, out_path: str | Path,
               settings: SaeConfig, seed: int, device: str = "cpu") -> None:
    """Stage 1 (reconstruction only) for one layer -> sae_stage1.pt."""
    data = load_layer(activations, layer, device)
    model = new_sae(data, settings, seed).to(device)
    log.info("stage1 layer %d on %s: d_model %d, %d free + %d relation slots, %d training "
             "examples", layer, device, data.d_model, settings.n_free,
             len(data.relation_names), len(data.slices()["train_seen"]))
    out_path = Path(out_path)
    history = train_stage(model, data, "stage1", settings, seed, out_path.parent / "checkpoints",
                          run_identity("stage1", data, settings, seed))
    meta = _run_metadata(data, settings, seed, "stage1", activations, device)
    save_sae(out_path, model, {**meta, "history": {"stage1": history}})


def run_stage2(activations: str | Path, layer: int, mode: str, init_path: str | Path,
               out_dir: str | Path, settings: SaeConfig, seed: int, device: str = "cpu",
               model_dir: str | Path | None = None) -> None:
    """Stage 2 of one mode for one layer -> sae_final.pt and training_history.json.

    joint and separate_activation start from stage 1's SAE; separate_value starts from
    the finished separate_activation SAE and trains only its value heads. A `lens` value
    head reads the LM's final norm and unembedding from `model_dir`.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; expected one of {MODES}")
    kind = RUN_KINDS[mode]
    data = load_layer(activations, layer, device)
    model, init_meta = load_sae(init_path, device)
    if init_meta.get("stage") != kind.init_from or init_meta.get("layer") != layer:
        raise ValueError(f"{init_path}: is stage {init_meta.get('stage')!r} of layer "
                         f"{init_meta.get('layer')}; mode {mode} at layer {layer} needs "
                         f"stage {kind.init_from!r} of layer {layer}")
    if model.d_model != data.d_model:
        raise ValueError(f"{init_path}: d_model {model.d_model} but {activations} layer "
                         f"{layer} has {data.d_model}")
    check_sae_fits_layer(init_path, init_meta, activations, data)
    if not kind.trains_values_only:
        model.reset_relation_slots()  # a checkpoint, if any, overrides this on resume
    identity = run_identity(mode, data, settings, seed, init_sha256=file_sha256(init_path))
    if kind.has_value_heads and model.value_head == "lens":
        if model_dir is None:
            raise ValueError(f"value_head 'lens' in mode {mode} needs the LM (--model): it "
                             "reads the answer through the LM's final norm and unembedding")
        from supervised_sae.lm.load import load_readout

        readout = load_readout(model_dir, data.answer_vocab_ids())
        model.attach_readout(readout.to(device))  # a checkpoint, if any, overrides this
        identity["readout_sha256"] = tensors_sha256(
            [readout.weight, readout.bias, readout.unembed, readout.unembed_bias])
    out_dir = Path(out_dir)
    log.info("%s layer %d on %s, starting from %s", mode, layer, device, init_path)
    history = train_stage(model, data, mode, settings, seed, out_dir / "checkpoints", identity)
    previous = dict(init_meta.get("history", {}))
    if kind.trains_values_only:
        previous = {"frozen_sae": previous}
    all_history = {**previous, "stage2": history}
    meta = _run_metadata(data, settings, seed, mode, activations, device)
    meta["initialised_from"] = str(init_path)
    write_json(out_dir / "training_history.json", {"metadata": meta, "stages": all_history})
    save_sae(out_dir / "sae_final.pt", model, {**meta, "history": all_history})


@torch.no_grad()
def mean_free_l0(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
                 chunk: int = 1024) -> float:
    """Mean number of active free slots per row."""
    active = sum(float((model.encode(data.x[rows[s : s + chunk]])[:, : model.n_free] > 0)
                       .sum()) for s in range(0, len(rows), chunk))
    return active / max(len(rows), 1)


def run_baseline(kind: str, activations: str | Path, layer: int, out_dir: str | Path,
                 settings: SaeConfig, seed: int, device: str = "cpu",
                 l0_from: str | Path | None = None) -> None:
    """A baseline SAE without relation slots, trained for the epochs of both stages
    together (the supervised runs' data and budget), scored through the free slots
    matched to relations after training:

    - unsupervised: the same SAE, recon + sparsity;
    - topk: a TopK SAE on recon alone, k = the mean free-slot L0 on train data of the
      supervised SAE in `l0_from`, rounded (a sparsity-matched reference).
    """
    data = load_layer(activations, layer, device)
    model = new_sae(data, settings, seed, relation_slots=False)
    identity = run_identity(kind, data, settings, seed)
    if kind == "topk":
        if l0_from is None:
            raise ValueError("the TopK baseline needs --init: the supervised SAE whose "
                             "free-slot L0 sets k")
        reference, reference_meta = load_sae(l0_from, device)
        check_sae_fits_layer(l0_from, reference_meta, activations, data)
        k = max(1, round(mean_free_l0(reference, data, data.slices()["train_seen"])))
        model.topk = min(k, settings.n_free)
        identity["init_sha256"] = file_sha256(l0_from)
        log.info("TopK baseline: k = %d, the mean free-slot L0 of %s on train data", k,
                 l0_from)
    model.to(device)
    out_dir = Path(out_dir)
    log.info("%s baseline layer %d on %s: %d free slots, %d epochs", kind, layer, device,
             settings.n_free, epochs_of(kind, settings))
    history = train_stage(model, data, kind, settings, seed, out_dir / "checkpoints", identity)
    meta = _run_metadata(data, settings, seed, kind, activations, device)
    if l0_from is not None:
        meta["l0_from"] = str(l0_from)
    write_json(out_dir / "training_history.json", {"metadata": meta, "stages": {kind: history}})
    save_sae(out_dir / "sae_final.pt", model, {**meta, "history": {kind: history}})
