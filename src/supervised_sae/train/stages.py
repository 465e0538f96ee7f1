"""The run kinds' stages for one layer: a fresh or loaded SAE, trained, saved with its
metadata (stage 1, the stage-2 modes, and the baselines without relation slots)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from supervised_sae import __version__
from supervised_sae.atomic import write_json
from supervised_sae.checkpoints import file_sha256, tensors_sha256
from supervised_sae.config import SaeConfig
from supervised_sae.data.cross_checks import check_sae_fits_layer
from supervised_sae.data.store_reader import LayerData, load_layer
from supervised_sae.registry import encoder_spec
from supervised_sae.runs import MODES, RUN_KINDS, encoder_of, matches_l0, run_kind
from supervised_sae.sae.io import load_sae, save_sae
from supervised_sae.sae.model import SupervisedSAE, make_encoder
from supervised_sae.train.trainer import epochs_of, input_scale, train_stage

log = logging.getLogger(__name__)


def run_identity(kind: str, data: LayerData, settings: SaeConfig, seed: int,
                 init_sha256: str | None = None) -> dict[str, Any]:
    """Everything that changes a run's tensors: its checkpoints' identity."""
    return {"kind": kind, "layer": data.layer, "seed": seed,
            "sae": settings.result_identity(), "activations_sha256": data.fingerprint,
            "n_relations": len(data.relation_names), "n_answers": len(data.answer_values),
            "init_sha256": init_sha256}


def _run_metadata(data: LayerData, settings: SaeConfig, seed: int, stage: str,
                  activations: str | Path, device: str) -> dict[str, Any]:
    return {"layer": data.layer, "n_layers": data.n_layers, "stage": stage,
            "mode": None if stage == "stage1" else stage,
            "relation_names": list(data.relation_names),
            "answer_values": list(data.answer_values),
            "settings": {**settings.model_dump(mode="json"), "seed": seed},
            # the seed of the random init and of a fresh slot's draw (the run's + layer)
            "init_seed": seed + data.layer,
            # what training scaled the activations by (the saved weights read raw ones)
            "input_scale": input_scale(data, settings),
            "activations": str(activations), "activations_sha256": data.fingerprint,
            "device": device, "package_version": __version__,
            "torch_version": str(torch.__version__)}


def structure(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that fix an SAE's tensors and how it encodes: stage 2 trains the SAE
    it starts from, so these cannot change between the stages."""
    try:
        config = SaeConfig.model_validate({k: v for k, v in settings.items() if k != "seed"})
    except ValueError as err:
        raise ValueError(f"its recorded SAE settings do not read as this version's: {err}; "
                         "train it again") from err
    return {"encoder": config.encoder, **config.encoder_settings(), "n_free": config.n_free,
            "value_head": config.value_head, "decoder_norm": config.decoder_norm,
            "slot_only_hidden": config.slot_only_hidden}


def check_same_structure(init_path: str | Path, init_meta: dict[str, Any],
                         settings: SaeConfig) -> None:
    """Refuse a start file whose SAE was built with other structural settings than the
    config's: stage 2 would train the file's and record the config's."""
    try:
        theirs = structure(init_meta.get("settings", {}))
    except ValueError as err:
        raise ValueError(f"{init_path}: {err}") from err
    ours = structure(settings.model_dump(mode="json"))
    differing = [f"{k}: {theirs.get(k)!r} there, {ours[k]!r} in the config" for k in ours
                 if theirs.get(k) != ours[k]]
    if differing:
        raise ValueError(f"{init_path}: was trained with other SAE settings than this "
                         f"config's, which stage 2 cannot change ({'; '.join(differing)}); "
                         "train stage 1 again with this config, or use its settings")


def new_sae(data: LayerData, settings: SaeConfig, seed: int, relation_slots: bool = True,
            encoder: str | None = None, encoder_settings: dict[str, Any] | None = None
            ) -> SupervisedSAE:
    """A freshly initialised SAE for this layer's data (the config's encoder unless
    `encoder` names another)."""
    n_relations = len(data.relation_names) if relation_slots else 0
    encoder = encoder or settings.encoder
    if encoder_settings is None:
        encoder_settings = settings.encoder_settings(encoder)
    return SupervisedSAE(data.d_model, settings.n_free, n_relations,
                         len(data.answer_values) if relation_slots else 1,
                         value_head=settings.value_head, decoder_norm=settings.decoder_norm,
                         seed=seed + data.layer,
                         encoder=make_encoder(encoder, encoder_settings, settings.n_free),
                         slot_only_hidden=settings.slot_only_hidden)


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
    check_same_structure(init_path, init_meta, settings)
    if model.d_model != data.d_model:
        raise ValueError(f"{init_path}: d_model {model.d_model} but {activations} layer "
                         f"{layer} has {data.d_model}")
    check_sae_fits_layer(init_path, init_meta, activations, data)
    if not kind.trains_values_only:
        model.reset_relation_slots()  # a checkpoint, if any, overrides this on resume
    identity = run_identity(mode, data, settings, seed, init_sha256=file_sha256(init_path))
    if kind.has_value_heads and model.head.needs_readout:
        if model_dir is None:
            raise ValueError(f"value_head 'lens' in mode {mode} needs the LM (--model): it "
                             "reads the answer through the LM's final norm and unembedding")
        from supervised_sae.lm.load import load_readout

        readout = load_readout(model_dir, data)
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
    """Mean number of active free slots per row (the SAE as it encodes at inference)."""
    model.eval()
    active = sum(float((model.encode(data.x[rows[s : s + chunk]])[:, : model.n_free] > 0)
                       .sum()) for s in range(0, len(rows), chunk))
    return active / max(len(rows), 1)


def run_baseline(kind: str, activations: str | Path, layer: int, out_dir: str | Path,
                 settings: SaeConfig, seed: int, device: str = "cpu",
                 l0_from: str | Path | None = None) -> None:
    """A baseline SAE without relation slots, trained for the epochs of both stages
    together (the supervised runs' data and budget), scored through the free slots
    matched to relations after training:

    - unsupervised: the same SAE (the config's encoder), recon + its sparsity;
    - topk: a TopK SAE on recon alone, at the config's k when the supervised encoder has
      one, else k = the mean free-slot L0 on train data of the supervised SAE in
      `l0_from`, rounded (a sparsity-matched reference).
    """
    data = load_layer(activations, layer, device)
    identity = run_identity(kind, data, settings, seed)
    encoder = encoder_of(kind, settings.encoder)
    encoder_settings = None
    if matches_l0(kind, settings.encoder):
        if l0_from is None:
            raise ValueError(f"the {run_kind(kind).label} baseline needs --init: the "
                             "supervised SAE whose free-slot L0 sets its k")
        reference, reference_meta = load_sae(l0_from, device)
        check_sae_fits_layer(l0_from, reference_meta, activations, data)
        k = max(1, round(mean_free_l0(reference, data, data.slices()["train_seen"])))
        budget = encoder_spec(encoder).budget  # the reference encoder's: its k
        encoder_settings = {**settings.encoder_settings(encoder), budget: min(k, settings.n_free)}
        identity["init_sha256"] = file_sha256(l0_from)
        log.info("%s baseline: k = %d, the mean free-slot L0 of %s on train data", kind, k,
                 l0_from)
    model = new_sae(data, settings, seed, relation_slots=False, encoder=encoder,
                    encoder_settings=encoder_settings)
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
