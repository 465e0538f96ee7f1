"""The supervised sparse autoencoder: free slots, relation slots last, value heads."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from supervised_sae.lm.readout import READOUT_NORMS, Readout, readout_logits

VALUE_HEADS = ("gated", "slot_only", "lens")
DECODER_NORMS = ("none", "unit")


def decided_slot(z_slots: torch.Tensor) -> torch.Tensor:
    """Per row, the strictly largest positive slot; -1 (always wrong) on a tie for the top
    or when no slot fires, so an undecided row never passes for relation 0."""
    top2 = z_slots.topk(min(2, z_slots.shape[1]), dim=1).values
    decided = top2[:, 0] > 0
    if z_slots.shape[1] > 1:
        decided &= top2[:, 0] > top2[:, 1]
    return torch.where(decided, z_slots.argmax(1), torch.full_like(decided, -1,
                                                                   dtype=torch.long))


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
    - ``lens``: s = sum_r z_rel[r] * W_U[answers] LN_f(A_r x_hat_free + c_r), with the
      LM's own final norm LN_f and unembedding W_U as frozen buffers (`attach_readout`)
      and A_r, c_r trained (a tuned lens per relation, starting at the identity and the
      decoder bias, i.e. the logit lens of the reconstruction). It can name answers
      never seen as a training label, because the LM can. `lens_prior` measures how far
      A_r, c_r have moved from that start; training pays `sae.lens_prior` times it, so
      the head departs from the LM's own read-out only where train labels insist.

    Init: decoder rows are random directions of norm 0.1 (bias 0) and the encoder is
    the decoder's transpose, so every slot starts reading the direction it writes.
    Relation slots stay out of stage 1 (reconstruction only) and start stage 2 from
    `reset_relation_slots`: firing at 0.5 on every input, so none starts dead.
    """

    def __init__(self, d_model: int, n_free: int, n_relations: int, n_answers: int,
                 value_head: str = "gated", slot_only_hidden: int = 256,
                 decoder_norm: str = "none", seed: int = 0, readout_norm: str = "layer",
                 readout_eps: float = 1e-5, topk: int | None = None):
        super().__init__()
        if value_head not in VALUE_HEADS:
            raise ValueError(f"value_head={value_head!r}; expected one of {VALUE_HEADS}")
        if decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm={decoder_norm!r}; expected one of {DECODER_NORMS}")
        self.d_model, self.n_free, self.n_relations = d_model, n_free, n_relations
        self.n_answers, self.value_head, self.decoder_norm = n_answers, value_head, decoder_norm
        self.slot_only_hidden = slot_only_hidden
        if topk is not None and not 0 < topk <= n_free:
            raise ValueError(f"topk={topk}: expected 1..n_free ({n_free})")
        self.topk = topk  # TopK SAE (baseline): only the k largest free slots fire
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
        elif value_head == "lens":
            if readout_norm not in READOUT_NORMS:
                raise ValueError(f"readout_norm={readout_norm!r}; expected one of "
                                 f"{READOUT_NORMS}")
            self.readout_norm, self.readout_eps = readout_norm, float(readout_eps)
            self.A = nn.Parameter(torch.eye(d_model).repeat(n_relations, 1, 1))
            self.c = nn.Parameter(torch.zeros(n_relations, d_model))
            # the LM's final norm and answer unembedding, frozen (filled by attach_readout)
            self.register_buffer("readout_weight", torch.ones(d_model))
            self.register_buffer("readout_bias", torch.zeros(d_model))
            self.register_buffer("unembed", torch.zeros(n_answers, d_model))
            self.register_buffer("unembed_bias", torch.zeros(n_answers))
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
        if self.value_head == "lens":
            return [self.A, self.c]
        return [self.head_w1, self.head_b1, self.head_w2, self.head_b2]

    @torch.no_grad()
    def attach_readout(self, readout: Readout) -> None:
        """Copy the LM's final norm and answer unembedding into the `lens` head, and
        start it at the logit lens of the reconstruction: A_r = I, c_r = b_dec."""
        if readout.unembed.shape != self.unembed.shape:
            raise ValueError(f"readout has {tuple(readout.unembed.shape)} answer embeddings; "
                             f"this SAE needs {tuple(self.unembed.shape)}")
        self.readout_norm, self.readout_eps = readout.norm, float(readout.eps)
        for name in ("readout_weight", "readout_bias", "unembed", "unembed_bias"):
            source = getattr(readout, name.removeprefix("readout_"))
            getattr(self, name).copy_(source)
        self.A.copy_(torch.eye(self.d_model).expand_as(self.A))
        self.c.copy_(self.b_dec.expand_as(self.c))

    def lens_prior(self) -> torch.Tensor:
        """Mean over relations of ||A_r - I||_F^2 + ||c_r - b_dec||^2: zero at the logit
        lens of the reconstruction (b_dec is a moving target, not pulled toward c)."""
        eye = torch.eye(self.d_model, device=self.A.device, dtype=self.A.dtype)
        return (((self.A - eye) ** 2).sum() + ((self.c - self.b_dec.detach()) ** 2).sum()
                ) / self.n_relations

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = x @ self.W_enc + self.b_enc
        if self.topk is None:
            return torch.relu(pre)
        # ReLU(TopK(pre)) over the free slots (Gao et al. 2024); no relation slots here
        values, index = pre.topk(self.topk, dim=1)
        return torch.zeros_like(pre).scatter_(1, index, torch.relu(values))

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
        if self.value_head == "lens":
            if free_part is None:
                free_part = self.decode_with_free_part(z)[1]
            lensed = torch.einsum("bi,roi->bro", free_part, self.A) + self.c  # B x R x d
            logits = readout_logits(lensed, self.readout_norm, self.readout_eps,
                                    self.readout_weight, self.readout_bias, self.unembed,
                                    self.unembed_bias)  # B x R x answers
            return torch.einsum("br,bra->ba", z_rel.to(logits.dtype), logits)
        hidden = torch.relu(z_rel.unsqueeze(2) * self.head_w1 + self.head_b1)  # B x R x H
        return torch.einsum("brh,rha->ba", hidden, self.head_w2) + self.head_b2.sum(0)

    def forward(self, x: torch.Tensor, with_values: bool = True,
                relation_slots: bool = True) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        if not relation_slots:  # stage 1: the free slots alone reconstruct
            z = torch.nn.functional.pad(z[:, : self.n_free], (0, self.n_relations))
        if with_values and self.value_head in ("gated", "lens"):
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
        meta = {"d_model": self.d_model, "n_free": self.n_free,
                "n_relations": self.n_relations, "n_answers": self.n_answers,
                "value_head": self.value_head, "slot_only_hidden": self.slot_only_hidden,
                "decoder_norm": self.decoder_norm}
        if self.value_head == "lens":
            meta.update(readout_norm=self.readout_norm, readout_eps=self.readout_eps)
        if self.topk is not None:
            meta["topk"] = self.topk
        return meta


SAE_FORMAT = "supervised_sae.sae.v1"


def save_sae(path, model: SupervisedSAE, metadata: dict[str, Any]) -> None:
    """Tensors plus plain metadata; loads with torch.load(weights_only=True)."""
    from supervised_sae.atomic import torch_save

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
                          decoder_norm=meta["decoder_norm"],
                          readout_norm=meta.get("readout_norm", "layer"),
                          readout_eps=meta.get("readout_eps", 1e-5), topk=meta.get("topk"))
    model.load_state_dict(blob["state_dict"])
    return model.to(device), meta
