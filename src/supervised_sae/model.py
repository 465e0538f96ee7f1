"""The supervised sparse autoencoder: free slots, relation slots last, value heads."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

VALUE_HEADS = ("gated", "slot_only")
DECODER_NORMS = ("none", "unit")


class _DecodeWithFreePart(torch.autograd.Function):
    """x_hat = z W_dec + b_dec and free_part = z_free W_dec_free from one big matmul.

    Written as x_hat - b_dec - z_rel W_dec_rel with autograd, the slice W_dec[n_free:]
    makes the backward allocate and zero-fill a second full-size gradient of W_dec
    (~300 MB at the seed's shape, about a third of a CPU step). Here the backward runs
    one matmul per operand on the summed gradient and corrects the few relation rows.
    """

    @staticmethod
    def forward(ctx, z, w_dec, b_dec, n_free: int):
        device = z.device.type
        # one compute dtype for both passes (autocast does not reach into the backward)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else z.dtype
        ctx.dtype, ctx.z_dtype, ctx.n_free = dtype, z.dtype, n_free
        with torch.autocast(device, enabled=False):
            z, w = z.to(dtype), w_dec.to(dtype)
            base = z @ w
            free_part = base - z[:, n_free:] @ w[n_free:]
            x_hat = base + b_dec.to(dtype)
        ctx.save_for_backward(z, w_dec)
        return x_hat, free_part

    @staticmethod
    def backward(ctx, g_x_hat, g_free):
        z, w_dec = ctx.saved_tensors
        n_free, dtype = ctx.n_free, ctx.dtype
        g_x_hat = torch.zeros_like(g_free, dtype=dtype) if g_x_hat is None else g_x_hat.to(dtype)
        g_free = torch.zeros_like(g_x_hat, dtype=dtype) if g_free is None else g_free.to(dtype)
        w = w_dec.to(dtype)
        g_all = g_x_hat + g_free  # free rows feed both outputs, relation rows only x_hat
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = g_all @ w.t()
            grad_z[:, n_free:] -= g_free @ w[n_free:].t()
            grad_z = grad_z.to(ctx.z_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = z.t() @ g_all
            grad_w[n_free:] -= z[:, n_free:].t() @ g_free
            grad_w = grad_w.to(w_dec.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = g_x_hat.sum(0).to(w_dec.dtype)
        return grad_z, grad_w, grad_b, None


class SupervisedSAE(nn.Module):
    """z = ReLU(x W_enc + b_enc), x_hat = z W_dec + b_dec.

    Slots are `n_free` free slots followed by `n_relations` relation slots (one per
    relation, in relation order). Value heads score the answer vocabulary:

    - ``gated`` (default): s = sum_r z_rel[r] * V_r(x_hat_free), where x_hat_free is the
      free slots' part of the reconstruction: the relation slot that fires gates a
      linear read-out of the entity's features.
    - ``slot_only`` (published variant): s = sum_r MLP_r(z_rel[r]) with
      Linear(1->hidden) -> ReLU -> Linear(hidden->vocab); it sees only scalars, so it
      cannot know who is asked about.

    Init: decoder rows are random directions of norm 0.1 (bias 0) and the encoder is
    the decoder's transpose, so every slot starts reading the direction it writes.
    Relation slots stay out of stage 1 (reconstruction only) and start stage 2 from
    `reset_relation_slots`: firing at 0.5 on every input, so none starts dead.
    """

    def __init__(self, d_model: int, n_free: int, n_relations: int, n_answers: int,
                 value_head: str = "gated", slot_only_hidden: int = 256,
                 decoder_norm: str = "none", seed: int = 0):
        super().__init__()
        if value_head not in VALUE_HEADS:
            raise ValueError(f"value_head={value_head!r}; expected one of {VALUE_HEADS}")
        if decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm={decoder_norm!r}; expected one of {DECODER_NORMS}")
        self.d_model, self.n_free, self.n_relations = d_model, n_free, n_relations
        self.n_answers, self.value_head, self.decoder_norm = n_answers, value_head, decoder_norm
        self.slot_only_hidden = slot_only_hidden
        n_slots = n_free + n_relations
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(n_slots, d_model, generator=g)
        w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.W_enc = nn.Parameter(w_dec.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(n_slots))
        if value_head == "gated":
            bound = 1 / math.sqrt(d_model)
            self.V = nn.Parameter(
                (torch.rand(n_relations, d_model, n_answers, generator=g) * 2 - 1) * bound)
            self.V_bias = nn.Parameter(torch.zeros(n_relations, n_answers))
        else:
            h = slot_only_hidden
            self.head_w1 = nn.Parameter(torch.rand(n_relations, h, generator=g) * 2 - 1)
            self.head_b1 = nn.Parameter(torch.zeros(n_relations, h))
            self.head_w2 = nn.Parameter(
                (torch.rand(n_relations, h, n_answers, generator=g) * 2 - 1) / math.sqrt(h))
            self.head_b2 = nn.Parameter(torch.zeros(n_relations, n_answers))

    # Parameter groups, by what each training mode owns.
    def encoder_decoder_parameters(self) -> list[nn.Parameter]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def value_parameters(self) -> list[nn.Parameter]:
        if self.value_head == "gated":
            return [self.V, self.V_bias]
        return [self.head_w1, self.head_b1, self.head_w2, self.head_b2]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def decode_with_free_part(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction and the free slots' part of it (without b_dec)."""
        return _DecodeWithFreePart.apply(z, self.W_dec, self.b_dec, self.n_free)

    def value_logits(self, z: torch.Tensor, free_part: torch.Tensor | None = None
                     ) -> torch.Tensor:
        z_rel = z[:, self.n_free :]
        if self.value_head == "gated":
            if free_part is None:
                free_part = self.decode_with_free_part(z)[1]
            # sum_r z_rel[r] (free_part V_r + c_r), as one matmul over (relation, dim)
            gated = (z_rel.unsqueeze(2) * free_part.unsqueeze(1)).flatten(1)
            return gated @ self.V.flatten(0, 1) + z_rel @ self.V_bias
        hidden = torch.relu(z_rel.unsqueeze(2) * self.head_w1 + self.head_b1)  # B x R x H
        return torch.einsum("brh,rha->ba", hidden, self.head_w2) + self.head_b2.sum(0)

    def forward(self, x: torch.Tensor, with_values: bool = True,
                relation_slots: bool = True) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        if not relation_slots:  # stage 1: the free slots alone reconstruct
            z = torch.nn.functional.pad(z[:, : self.n_free], (0, self.n_relations))
        if with_values and self.value_head == "gated":
            x_hat, free_part = self.decode_with_free_part(z)
            return {"z": z, "x_hat": x_hat, "logits": self.value_logits(z, free_part)}
        out = {"z": z, "x_hat": self.decode(z)}
        if with_values:
            out["logits"] = self.value_logits(z)
        return out

    @torch.no_grad()
    def reset_relation_slots(self) -> None:
        """Relation slots read nothing yet and fire at 0.5 everywhere (alive, undecided).

        A ReLU slot that is negative on all of its relation's inputs gets no gradient
        from the alignment loss and never recovers; starting it on everywhere avoids it.
        """
        self.W_enc[:, self.n_free :] = 0.0
        self.b_enc[self.n_free :] = 0.5

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """`unit` decoder norm: free decoder rows back to unit length after a step."""
        if self.decoder_norm == "unit":
            rows = self.W_dec[: self.n_free]
            rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def shape_metadata(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "n_free": self.n_free, "n_relations": self.n_relations,
                "n_answers": self.n_answers, "value_head": self.value_head,
                "slot_only_hidden": self.slot_only_hidden, "decoder_norm": self.decoder_norm}


SAE_FORMAT = "supervised_sae.sae.v1"


def save_sae(path, model: SupervisedSAE, metadata: dict[str, Any]) -> None:
    """Tensors plus plain metadata; loads with torch.load(weights_only=True)."""
    from .atomic import torch_save

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save({"format": SAE_FORMAT, "state_dict": state,
                "metadata": {**model.shape_metadata(), **metadata}}, path)


def load_sae(path, device: str | torch.device = "cpu") -> tuple[SupervisedSAE, dict[str, Any]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot load as a supervised_sae model file: {err}") from err
    if not isinstance(blob, dict) or blob.get("format") != SAE_FORMAT:
        raise ValueError(f"{path}: not a supervised_sae model file (format {SAE_FORMAT})")
    meta = blob["metadata"]
    model = SupervisedSAE(meta["d_model"], meta["n_free"], meta["n_relations"],
                          meta["n_answers"], value_head=meta["value_head"],
                          slot_only_hidden=meta["slot_only_hidden"],
                          decoder_norm=meta["decoder_norm"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device), meta
