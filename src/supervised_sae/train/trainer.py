"""Stage-1 and stage-2 training of the supervised SAE, resumable and deterministic.

The layer's data lives on the device; each epoch's order is a permutation drawn from a
generator seeded by (seed, stage, epoch), so a resumed run sees the same batches as an
uninterrupted one. Per-step losses stay on the device and are read once per epoch.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from supervised_sae.backend import configure_backend
from supervised_sae.checkpoints import CheckpointStore, exclusive_run
from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import LayerData
from supervised_sae.runs import run_kind
from supervised_sae.sae.losses import LossSettings
from supervised_sae.sae.model import SupervisedSAE, decided_slot
from supervised_sae.train.step import (
    DIAGNOSTICS,
    calibrate,
    logged_components,
    make_step,
    stage_components,
)

log = logging.getLogger(__name__)



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
        history = _scaled_train_stage(model, data, stage, settings, seed, checkpoint_dir,
                                      identity)
    warn_if_free_bank_dead(model, data, stage)
    return history


@torch.no_grad()
def warn_if_free_bank_dead(model: SupervisedSAE, data: LayerData, stage: str,
                           chunk: int = 1024) -> bool:
    """A free bank that fires on no train row has learnt nothing (e.g. a JumpReLU
    threshold above every pre-activation); say so loudly rather than save it quietly."""
    if not model.n_free:
        return False
    model.eval()
    rows = data.slices()["train_seen"]
    fired = any(bool((model.encode(data.x[rows[s : s + chunk]])[:, : model.n_free] > 0).any())
                for s in range(0, len(rows), chunk))
    if not fired:
        log.warning("%s: EVERY ONE of the %d free slots is dead at the end of training (no "
                    "train row fires any): the free bank learnt nothing; check the encoder's "
                    "settings (e.g. sae.jumprelu_threshold)", stage, model.n_free)
    return not fired


def _scaled_train_stage(model: SupervisedSAE, data: LayerData, stage: str,
                        settings: SaeConfig, seed: int, checkpoint_dir: str | Path,
                        identity: dict[str, Any]) -> list[dict[str, Any]]:
    """`_train_stage` on activations scaled by `input_scale`, the SAE saved for raw ones."""
    scale = input_scale(data, settings)
    if scale == 1.0:
        return _train_stage(model, data, stage, settings, seed, checkpoint_dir, identity)
    # trained on activations of mean norm sqrt(d_model), saved for raw ones
    log.info("%s: activations scaled by %.4g (mean norm %.4g -> sqrt(d_model))", stage,
             scale, math.sqrt(data.d_model) / scale)
    data.x.mul_(scale)
    model.rescale_input(scale)
    try:
        return _train_stage(model, data, stage, settings, seed, checkpoint_dir,
                            {**identity, "input_scale": scale})
    finally:
        model.rescale_input(1 / scale)
        data.x.div_(scale)


def input_scale(data: LayerData, settings: SaeConfig) -> float:
    """`normalize_activations: mean_norm`: sqrt(d_model) / the mean norm of the train
    rows (train people, seen templates); 1 for `none`."""
    if settings.normalize_activations == "none":
        return 1.0
    rows = data.slices()["train_seen"]
    mean_norm = float(data.x[rows].float().norm(dim=1).mean())
    return math.sqrt(data.d_model) / max(mean_norm, 1e-12)


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
    logged = logged_components(stage, losses, model.n_free, model.value_head,
                               model.encoder.name)
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
    step_fn = make_step(model, optimizer, stage_components(stage, model.encoder.name),
                        losses, logged, autocast, relation_slots=kind.relation_slots,
                        sae=settings)
    if settings.compile:
        step_fn = torch.compile(step_fn)
    warmup_steps = settings.sparse_warmup * epochs * steps
    model.train()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(
            seed * 1_000_003 + kind.seed_offset * 10_007 + epoch)
        order = train_rows[torch.randperm(n_train, generator=gen).to(device)]
        step_log = torch.zeros(steps, len(logged) + 3, device=device)
        for step in tqdm(range(steps), desc=f"{stage} epoch {epoch + 1}/{epochs}",
                         leave=False, mininterval=2, disable=steps < 50):
            idx = order[step * batch : (step + 1) * batch]
            done = epoch * steps + step
            ramp = torch.tensor(min(1.0, done / warmup_steps) if warmup_steps else 1.0)
            step_log[step] = step_fn(data.x[idx], data.relation[idx], data.answer[idx],
                                     ramp.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        record = _epoch_record(stage, epoch, step_log.cpu(), logged, steps, n_train, elapsed)
        evaluates = kind.relation_slots and ((epoch + 1) % settings.eval_every == 0
                                             or epoch + 1 == epochs)
        if evaluates or choose_epoch:
            calibrate(model, data, train_rows)  # once, for both evaluations below
        if not kind.relation_slots:
            del record["slot_accuracy"]
        elif evaluates:
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
    calibrate(model, data, train_rows)  # the kept epoch's threshold (cheap; baselines too)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


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
