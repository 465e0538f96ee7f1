"""Stage-1 and stage-2 training of the supervised SAE, resumable and deterministic.

The layer's data lives on the device; each epoch's order is a permutation drawn from a
generator seeded by (seed, stage, epoch), so a resumed run sees the same batches as an
uninterrupted one. Per-step losses stay on the device and are read once per epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .atomic import write_json
from .backend import configure_backend
from .checkpoints import CheckpointStore
from .losses import COMPONENTS, DEFAULT_WEIGHTS, MODE_COMPONENTS, LossSettings, sae_losses
from .model import SupervisedSAE, load_sae, save_sae

log = logging.getLogger(__name__)

MODES = ("joint", "separate_activation", "separate_value")
MODE_DIRS = {"joint": "joint", "separate_activation": "feature_activation",
             "separate_value": "next_token_prediction"}
STAGE_SEED_OFFSET = {"stage1": 1, "joint": 2, "separate_activation": 3, "separate_value": 4,
                     "unsupervised": 5}
DIAGNOSTICS = ("indep_per_pair", "indep_excess")


@dataclass
class LayerData:
    """One layer's activations and labels, as tensors on one device."""

    x: torch.Tensor
    relation: torch.Tensor
    answer: torch.Tensor
    split: torch.Tensor  # 0 train people, 1 test people
    heldout: torch.Tensor  # question template held out of training
    person: torch.Tensor
    answer_token_id: torch.Tensor  # the LM's token id of each answer's first token
    relation_names: list[str]
    answer_tokens: list[str]
    layer: int
    n_layers: int

    @property
    def d_model(self) -> int:
        return self.x.shape[1]

    def slices(self) -> dict[str, torch.Tensor]:
        """Row indices: the training slice and the four evaluation slices."""
        s, h = self.split, self.heldout
        masks = {"train_seen": (s == 0) & ~h, "train_heldout": (s == 0) & h,
                 "test_seen": (s == 1) & ~h, "test_heldout": (s == 1) & h}
        return {k: m.nonzero().squeeze(1) for k, m in masks.items()}


def load_layer(path: str | Path, layer: int, device: str | torch.device = "cpu") -> LayerData:
    """One layer's activations and labels, after checking the file's layout and values."""
    from .activations import check_activation_file

    check_activation_file(path, [layer])
    with h5py.File(path, "r") as f:
        n_layers = int(f.attrs["n_layers"])
        x = torch.from_numpy(f[f"layers/{layer}"][:].astype(np.float32))
        data = LayerData(
            x=x.to(device),
            relation=torch.from_numpy(f["relation"][:]).long().to(device),
            answer=torch.from_numpy(f["answer"][:]).long().to(device),
            split=torch.from_numpy(f["split"][:]).long().to(device),
            heldout=torch.from_numpy(f["template_heldout"][:].astype(bool)).to(device),
            person=torch.from_numpy(f["person"][:]).long().to(device),
            answer_token_id=torch.from_numpy(f["answer_token_id"][:]).long().to(device),
            relation_names=[s.decode() if isinstance(s, bytes) else s
                            for s in f["relation_names"][:]],
            answer_tokens=[s.decode() if isinstance(s, bytes) else s
                           for s in f["answer_tokens"][:]],
            layer=layer, n_layers=n_layers,
        )
    return data


@dataclass
class TrainSettings:
    """Everything that decides a training run (config `sae:` section)."""

    n_free: int = 100_000
    stage1_epochs: int = 50
    stage2_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    indep_policy: str = "skip_above_threshold"
    indep_threshold: int = 10_000
    normalize_per_pair: bool = False
    value_head: str = "gated"
    slot_only_hidden: int = 256
    decoder_norm: str = "none"
    eval_every: int = 5
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    seed: int = 0
    bf16: bool = False
    compile: bool = False
    tf32: bool = True

    @classmethod
    def from_config(cls, sae: dict[str, Any], seed: int = 0) -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in sae.items() if k in known}
        if "weights" in values:
            values["weights"] = {**DEFAULT_WEIGHTS, **values["weights"]}
        return cls(seed=seed, **values)

    def loss_settings(self) -> LossSettings:
        return LossSettings(self.weights, self.indep_policy, self.indep_threshold,
                            self.normalize_per_pair)


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
        slot_hits += (out["z"][:, model.n_free :].argmax(1) == data.relation[idx]).sum()
        if with_values:
            value_hits += (out["logits"].argmax(1) == data.answer[idx]).sum()
    result = {"slot_accuracy": float(slot_hits) / len(rows)}
    if with_values:
        result["value_accuracy"] = float(value_hits) / len(rows)
    return result


def make_optimizer(params: list[torch.nn.Parameter], settings: TrainSettings
                   ) -> torch.optim.AdamW:
    # fused: one pass over parameter, gradient and both moments, on CUDA and (since
    # torch 2.4) on CPU, where the default per-tensor loop is ~3.5x slower
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                             fused=True)


def owned_parameters(model: SupervisedSAE, stage: str) -> list[torch.nn.Parameter]:
    """What a stage trains; only these get gradients, the rest stay bitwise unchanged."""
    if stage == "separate_value":
        return model.value_parameters()
    values = model.value_parameters() if "value" in MODE_COMPONENTS[stage] else []
    return model.encoder_decoder_parameters() + values


def train_only_owned(model: SupervisedSAE, stage: str) -> list[torch.nn.Parameter]:
    """Turn gradients on for the stage's parameters only; return those parameters."""
    params = owned_parameters(model, stage)
    owned = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)
    return params


def logged_components(stage: str, loss_settings: LossSettings, n_free: int) -> list[str]:
    """Loss components (and indep diagnostics) a stage computes, in a fixed order."""
    components = MODE_COMPONENTS[stage]
    logged = [c for c in COMPONENTS if c in components]
    if "indep" in components and loss_settings.indep_enabled(n_free):
        return logged + list(DIAGNOSTICS)
    return [c for c in logged if c != "indep"]


def train_stage(model: SupervisedSAE, data: LayerData, stage: str, settings: TrainSettings,
                checkpoint_dir: str | Path, epochs: int) -> list[dict[str, Any]]:
    """Train `model` in place for one stage ("stage1" or a mode); return its history.

    Only the parameters the stage owns are given to the optimizer, so the others stay
    bitwise unchanged. Resumes from the newest good checkpoint in checkpoint_dir.
    """
    device = data.x.device
    configure_backend(device, settings.tf32)
    components = MODE_COMPONENTS[stage]
    owns_values = "value" in components
    params = train_only_owned(model, stage)
    optimizer = make_optimizer(params, settings)
    loss_settings = settings.loss_settings()
    slices = data.slices()
    train_rows = slices["train_seen"]
    n_train = len(train_rows)
    if n_train == 0:
        raise ValueError("no training rows (train people, seen templates) in the activations")
    batch = settings.batch_size
    steps = math.ceil(n_train / batch)
    logged = logged_components(stage, loss_settings, model.n_free)
    store = CheckpointStore(checkpoint_dir, keep=settings.keep_checkpoints, identity={
        "stage": stage, **model.shape_metadata(), "n_train": n_train, "batch_size": batch,
        "seed": settings.seed, "epochs": epochs})
    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = store.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        log.info("%s: resumed from %s (%d/%d epochs done)", stage, store.latest_path(),
                 start_epoch, epochs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    step_fn = make_step(model, optimizer, components, loss_settings, logged, autocast,
                        relation_slots=stage != "stage1")
    if settings.compile:
        step_fn = torch.compile(step_fn)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(
            settings.seed * 1_000_003 + STAGE_SEED_OFFSET[stage] * 10_007 + epoch)
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
        if stage in ("stage1", "unsupervised"):  # no relation slots in use
            del record["slot_accuracy"]
        elif (epoch + 1) % settings.eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            record["eval"] = {name: evaluate_accuracy(model, data, rows, owns_values)
                              for name, rows in slices.items()}
            model.train()
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
                               "history": history})
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def make_step(model, optimizer, components, loss_settings, logged, autocast,
              relation_slots: bool = True):
    """One optimisation step; returns a device tensor row: logged parts, total, accuracies."""
    n_free = model.n_free
    with_values = "value" in components

    def step(x, relation, answer):
        with autocast:
            out = model(x, with_values=with_values, relation_slots=relation_slots)
            total, parts = sae_losses(out, x, relation, answer, n_free, components,
                                      loss_settings)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        model.normalize_decoder()
        with torch.no_grad():
            slot_acc = ((out["z"][:, n_free:].argmax(1) == relation).float().mean()
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


def _run_metadata(data: LayerData, settings: TrainSettings, stage: str, activations: str,
                  device: str) -> dict[str, Any]:
    return {"layer": data.layer, "n_layers": data.n_layers, "stage": stage,
            "mode": None if stage == "stage1" else stage,
            "relation_names": list(data.relation_names),
            "answer_tokens": list(data.answer_tokens),
            "settings": {k: v for k, v in vars(settings).items()},
            "activations": str(activations), "device": device,
            "package_version": __version__, "torch_version": str(torch.__version__)}


def run_stage1(activations: str | Path, layer: int, out_path: str | Path,
               settings: TrainSettings, device: str = "cpu") -> None:
    """Stage 1 (reconstruction only) for one layer -> sae_stage1.pt."""
    data = load_layer(activations, layer, device)
    model = SupervisedSAE(data.d_model, settings.n_free, len(data.relation_names),
                          len(data.answer_tokens), value_head=settings.value_head,
                          slot_only_hidden=settings.slot_only_hidden,
                          decoder_norm=settings.decoder_norm, seed=settings.seed + layer)
    model.to(device)
    log.info("stage1 layer %d on %s: d_model %d, %d free + %d relation slots, %d training "
             "examples", layer, device, data.d_model, settings.n_free,
             len(data.relation_names), len(data.slices()["train_seen"]))
    out_path = Path(out_path)
    history = train_stage(model, data, "stage1", settings, out_path.parent / "checkpoints",
                          settings.stage1_epochs)
    meta = _run_metadata(data, settings, "stage1", str(activations), device)
    save_sae(out_path, model, {**meta, "history": {"stage1": history}})


def run_stage2(activations: str | Path, layer: int, mode: str, init_path: str | Path,
               out_dir: str | Path, settings: TrainSettings, device: str = "cpu") -> None:
    """Stage 2 of one mode for one layer -> sae_final.pt and training_history.json.

    joint and separate_activation start from stage 1's SAE; separate_value starts from
    the finished separate_activation SAE and trains only its value heads.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; expected one of {MODES}")
    data = load_layer(activations, layer, device)
    model, init_meta = load_sae(init_path, device)
    expected_stage = "separate_activation" if mode == "separate_value" else "stage1"
    if init_meta.get("stage") != expected_stage or init_meta.get("layer") != layer:
        raise ValueError(f"{init_path}: is stage {init_meta.get('stage')!r} of layer "
                         f"{init_meta.get('layer')}; mode {mode} at layer {layer} needs "
                         f"stage {expected_stage!r} of layer {layer}")
    if model.d_model != data.d_model:
        raise ValueError(f"{init_path}: d_model {model.d_model} but {activations} layer "
                         f"{layer} has {data.d_model}")
    if mode != "separate_value":
        model.reset_relation_slots()  # a checkpoint, if any, overrides this on resume
    out_dir = Path(out_dir)
    log.info("%s layer %d on %s, starting from %s", mode, layer, device, init_path)
    history = train_stage(model, data, mode, settings, out_dir / "checkpoints",
                          settings.stage2_epochs)
    previous = dict(init_meta.get("history", {}))
    if mode == "separate_value":
        previous = {"frozen_sae": previous}
    all_history = {**previous, "stage2": history}
    meta = _run_metadata(data, settings, mode, str(activations), device)
    meta["initialised_from"] = str(init_path)
    write_json(out_dir / "training_history.json", {"metadata": meta, "stages": all_history})
    save_sae(out_dir / "sae_final.pt", model, {**meta, "history": all_history})


def run_unsupervised(activations: str | Path, layer: int, out_dir: str | Path,
                     settings: TrainSettings, device: str = "cpu") -> None:
    """Baseline: the same SAE without relation slots, recon + sparsity, for the epochs
    of both stages together (same data and budget as the supervised runs)."""
    data = load_layer(activations, layer, device)
    model = SupervisedSAE(data.d_model, settings.n_free, 0, 1, decoder_norm=settings.decoder_norm,
                          seed=settings.seed + layer).to(device)
    out_dir = Path(out_dir)
    epochs = settings.stage1_epochs + settings.stage2_epochs
    log.info("unsupervised baseline layer %d on %s: %d free slots, %d epochs", layer, device,
             settings.n_free, epochs)
    history = train_stage(model, data, "unsupervised", settings, out_dir / "checkpoints", epochs)
    meta = _run_metadata(data, settings, "unsupervised", str(activations), device)
    write_json(out_dir / "training_history.json",
               {"metadata": meta, "stages": {"unsupervised": history}})
    save_sae(out_dir / "sae_final.pt", model, {**meta, "history": {"unsupervised": history}})
