"""One SAE training step, and what it computes: the stage's losses, the encoder's own
terms (JumpReLU's L0, AuxK), their warm-up, and the encoder's bookkeeping."""

from __future__ import annotations

import torch

from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import LayerData
from supervised_sae.registry import AUXK, SEED_ENCODER, EncoderTerm, encoder_spec
from supervised_sae.runs import COMPONENTS, run_kind
from supervised_sae.sae.losses import LossSettings, sae_losses
from supervised_sae.sae.model import SupervisedSAE, decided_slot

DIAGNOSTICS = ("indep_per_pair", "indep_excess")


def stage_components(stage: str, encoder: str = SEED_ENCODER) -> tuple[str, ...]:
    """The six losses a stage optimises: its run kind's, less the L1 term for encoders
    whose sparsity lives in the encoder (their table row's `l1`)."""
    components = run_kind(stage).components
    if encoder_spec(encoder).l1:
        return components
    return tuple(c for c in components if c != "sparse")


def encoder_terms(stage: str, encoder: str) -> tuple[EncoderTerm, ...]:
    """The encoder's own terms (its table row's: JumpReLU's L0, AuxK) in every stage
    that trains it."""
    if run_kind(stage).trains_values_only:
        return ()
    return encoder_spec(encoder).terms


def logged_components(stage: str, losses: LossSettings, n_free: int,
                      value_head: str | None = None, encoder: str = SEED_ENCODER) -> list[str]:
    """Loss components (and indep diagnostics) a stage computes, in a fixed order."""
    components = stage_components(stage, encoder)
    logged = ([c for c in COMPONENTS if c in components]
              + [term.name for term in encoder_terms(stage, encoder)])
    if "value" in components and value_head == "lens":
        logged.append("lens_prior")  # the lens head's penalty, logged under its loss name
    if "indep" in components and losses.indep_enabled(n_free):
        return logged + list(DIAGNOSTICS)
    return [c for c in logged if c != "indep"]


def make_step(model, optimizer, components, loss_settings, logged, autocast,
              relation_slots: bool = True, sae: SaeConfig | None = None):
    """One optimisation step; returns a device tensor row: logged parts, total, accuracies.

    The encoder's own terms among `logged` are weighted by their config keys.
    `ramp` (a 0-d tensor, 0..1) scales the sparsity weights during their warm-up."""
    sae = sae or SaeConfig()
    n_free = model.n_free
    with_values = "value" in components
    # the lens head's distance from the LM's read-out: a penalty on parameters, not on
    # the batch, so it is added here rather than computed in every forward
    penalised = with_values and model.value_penalty() is not None
    per_example = "sparse" in components and loss_settings.sparsity == "per_example"
    k_aux = min(sae.auxk_k or max(1, model.d_model // 2), n_free)
    terms = tuple(t for t in encoder_spec(model.encoder.name).terms if t.name in logged)
    trains_encoder = any(p is model.W_enc_rows for p in optimizer.param_groups[0]["params"])

    def step(x, relation, answer, ramp=1.0):
        with autocast:
            # AuxK's term needs the dead slots' decode from the forward itself
            auxk = ((model.encoder.dead_slots(sae.dead_rows), k_aux) if AUXK in terms
                    else None)
            out = model(x, with_values=with_values, relation_slots=relation_slots,
                        auxk=auxk)
            if per_example:
                out["free_decoder_norms"] = model.W_dec[:n_free].norm(dim=1)
            total, parts = sae_losses(out, x, relation, answer, n_free, components,
                                      loss_settings, sparse_ramp=ramp)
            if penalised:
                parts["lens_prior"] = model.value_penalty()
                total = total + loss_settings.lens_prior * parts["lens_prior"]
            if terms:
                own = model.encoder.terms(model, out, x)
                for term in terms:
                    parts[term.name] = own[term.name]
                    weight = getattr(sae, term.weight) * (ramp if term.ramped else 1.0)
                    total = total + weight * own[term.name]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        model.normalize_decoder()
        with torch.no_grad():
            if trains_encoder:
                model.encoder.after_step(out["pre_free"], out["z"][:, :n_free])
            slot_acc = ((decided_slot(out["z"][:, n_free:]) == relation).float().mean()
                        if model.n_relations else torch.zeros((), device=x.device))
            value_acc = ((out["logits"].argmax(1) == answer).float().mean() if with_values
                         else torch.zeros((), device=x.device))
            return torch.stack([parts[k].detach().float() for k in logged]
                               + [total.detach().float(), slot_acc, value_acc])

    return step


@torch.no_grad()
def calibrate(model: SupervisedSAE, data: LayerData, rows: torch.Tensor,
              chunk: int = 1024) -> None:
    """What the encoder needs for inference, fitted on train rows (BatchTopK's
    threshold); a no-op for the others."""
    model.encoder.calibrate(model.pre_activations(data.x[rows[s : s + chunk]])[:, : model.n_free]
                            for s in range(0, len(rows), chunk))
