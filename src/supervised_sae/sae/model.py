"""The supervised sparse autoencoder: free slots, relation slots last, a value head.

z = encoder(x W_enc + b_enc), x_hat = z W_dec + b_dec. Slots are `n_free` free slots
followed by `n_relations` relation slots (one per relation, in relation order). The
encoder (`sae.encoders`) and the value head (`sae.value_heads`) come from registries
(`supervised_sae.registry`); this module owns the weights they share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from supervised_sae.lm.readout import Readout
from supervised_sae.registry import DECODER_NORMS, ENCODERS, VALUE_HEADS, resolve
from supervised_sae.sae.decode import DecodeWithFreePart, EncodeLinear, SparseDecode
from supervised_sae.sae.encoders import Code, Encoder, ReLUEncoder, row_major


def decided_slot(z_slots: torch.Tensor) -> torch.Tensor:
    """Per row, the strictly largest positive slot; -1 (always wrong) on a tie for the top
    or when no slot fires, so an undecided row never passes for relation 0."""
    top2 = z_slots.topk(min(2, z_slots.shape[1]), dim=1).values
    decided = top2[:, 0] > 0
    if z_slots.shape[1] > 1:
        decided &= top2[:, 0] > top2[:, 1]
    return torch.where(decided, z_slots.argmax(1), torch.full_like(decided, -1,
                                                                   dtype=torch.long))



def dead_slots_top_k(pre_free: torch.Tensor, dead: torch.Tensor, k_aux: int) -> tuple:
    """AuxK's code (Gao et al. 2024): per row the k_aux largest pre-activations among
    dead free slots, through a ReLU, as (values, rows, slots). Live slots are masked to
    -inf, so with fewer dead slots than k_aux the rest are 0 (no dead slot: all 0)."""
    values, slots = pre_free.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
    rows, slots, values = row_major(torch.relu(values), slots)
    return values, rows, slots


def _state_dict_with_w_enc(module, state, prefix, local_metadata) -> None:
    rows = state.pop(prefix + "W_enc_rows")
    state[prefix + "W_enc"] = rows.t().contiguous()


def _w_enc_from_state_dict(state, prefix, *_args) -> None:
    if prefix + "W_enc" in state:
        state[prefix + "W_enc_rows"] = state.pop(prefix + "W_enc").t().contiguous()


def make_encoder(name: str, settings: dict[str, Any] | None = None, n_free: int = 0
                 ) -> Encoder:
    """A registered encoder by name, with its settings (e.g. {"k": 32} for topk)."""
    return resolve(ENCODERS, name, "encoder")(n_free=n_free, **(settings or {}))


class SupervisedSAE(nn.Module):
    """Init: decoder rows are random directions of norm 0.1 (bias 0) and the encoder is
    the decoder's transpose, so every slot starts reading the direction it writes.
    Relation slots stay out of stage 1 (reconstruction only) and start stage 2 from
    `reset_relation_slots`: firing at 0.5 on every input, so none starts dead.
    `head_options` go to the value head (slot_only_hidden; readout_norm, readout_eps).
    """

    def __init__(self, d_model: int, n_free: int, n_relations: int, n_answers: int,
                 value_head: str = "gated", decoder_norm: str = "none", seed: int = 0,
                 encoder: Encoder | None = None, **head_options: Any):
        super().__init__()
        if decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm={decoder_norm!r}; expected one of {DECODER_NORMS}")
        self.d_model, self.n_free, self.n_relations = d_model, n_free, n_relations
        self.n_answers, self.decoder_norm = n_answers, decoder_norm
        self.encoder = encoder or ReLUEncoder()  # a submodule: its state is saved
        n_slots = n_free + n_relations
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(n_slots, d_model, generator=g)
        w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        # W_enc [d_model, slots] is kept as its rows [slots, d_model]: a sparse code's
        # encoder gradient is then a row index_add, and files still hold W_enc
        self.W_enc_rows = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_slots))
        self._register_state_dict_hook(_state_dict_with_w_enc)
        self._register_load_state_dict_pre_hook(_w_enc_from_state_dict)
        head = resolve(VALUE_HEADS, value_head, "value head")
        self.head = head(d_model, n_relations, n_answers, g, **head_options)

    @property
    def W_enc(self) -> torch.Tensor:  # noqa: N802 (the field's name)
        """[d_model, slots], a view of the trained rows (writes go through)."""
        return self.W_enc_rows.t()

    @property
    def value_head(self) -> str:
        return self.head.name

    # Parameter groups, by what each training mode owns.
    def encoder_decoder_parameters(self) -> list[nn.Parameter]:
        """The weights and the encoder's own (JumpReLU's thresholds)."""
        return [self.W_enc_rows, self.b_enc, self.W_dec, self.b_dec,
                *self.encoder.parameters()]

    def value_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def attach_readout(self, readout: Readout) -> None:
        """The `lens` head: copy the LM's final norm and answer unembedding in, and start
        it at the logit lens of the reconstruction: A_r = I, c_r = b_dec."""
        self.head.attach_readout(readout, self.b_dec.detach())

    def value_penalty(self) -> torch.Tensor | None:
        """The value head's term on its own parameters (the lens prior), or None."""
        return self.head.penalty(self.b_dec)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x W_enc + b_enc, with a gradient for W_enc that is sparse when the code's is."""
        return EncodeLinear.apply(x, self.W_enc_rows, self.b_enc)

    def code(self, x: torch.Tensor) -> Code:
        return self.encoder.code(self.pre_activations(x), self.n_free)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(x).z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def decode_with_free_part(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction and the free slots' part of it (without b_dec)."""
        return DecodeWithFreePart.apply(z, self.W_dec, self.b_dec, self.n_free)

    def decode_code(self, code: Code, aux: tuple | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """decode_with_free_part of a code, from its active rows only when it is sparse;
        with `aux` (AuxK's (values, rows, slots)), also their decode, in the same pass."""
        if code.rows is None:
            x_hat, free_part = self.decode_with_free_part(code.z)
            aux_part = None if aux is None else SparseDecode.apply(
                *aux, code.z.new_zeros(len(code.z), 0), self.W_dec,
                torch.zeros_like(self.b_dec), len(code.z))[1]
            return x_hat, free_part, aux_part
        x_hat, free_part, aux_part = SparseDecode.apply(
            code.values, code.rows, code.slots, code.z[:, self.n_free :], self.W_dec,
            self.b_dec, len(code.z), *(aux or ()))
        return x_hat, free_part, aux_part if aux is not None else None

    def value_logits(self, z: torch.Tensor, free_part: torch.Tensor | None = None
                     ) -> torch.Tensor:
        if free_part is None and self.head.reads_free_part:
            free_part = self.decode_with_free_part(z)[1]
        return self.head.logits(z[:, self.n_free :], free_part)

    def forward(self, x: torch.Tensor, with_values: bool = True,
                relation_slots: bool = True, auxk: tuple[torch.Tensor, int] | None = None
                ) -> dict[str, torch.Tensor]:
        """z, x_hat, and (with_values) the value logits; also `pre_free`, the free slots'
        pre-activations, and `code`, the encoder's `Code` (its own terms read them).
        `auxk` (dead free slots, k_aux): also `auxk_part`, AuxK's decode of the dead
        slots' top k_aux."""
        pre = self.pre_activations(x)
        code = self.encoder.code(pre, self.n_free)
        if not relation_slots:  # stage 1: the free slots alone reconstruct
            code = code._replace(z=torch.nn.functional.pad(code.z[:, : self.n_free],
                                                           (0, self.n_relations)))
        aux = None if auxk is None else dead_slots_top_k(pre[:, : self.n_free], *auxk)
        x_hat, free_part, aux_part = self.decode_code(code, aux)
        out = {"z": code.z, "x_hat": x_hat, "pre_free": pre[:, : self.n_free], "code": code}
        if aux_part is not None:
            out["auxk_part"] = aux_part
        if with_values:
            out["logits"] = self.value_logits(code.z, free_part)
        return out

    @torch.no_grad()
    def rescale_input(self, factor: float) -> None:
        """This SAE, for inputs `factor` x as large: the same code, `factor` x the
        reconstruction (activation normalisation trains here and folds back)."""
        self.W_enc.div_(factor)
        self.W_dec.mul_(factor)
        self.b_dec.mul_(factor)
        self.head.rescale_free_part(factor)

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
        """What rebuilds this SAE's shape (saved with it; part of checkpoint identity)."""
        return {"d_model": self.d_model, "n_free": self.n_free,
                "n_relations": self.n_relations, "n_answers": self.n_answers,
                "encoder": self.encoder.name, "encoder_settings": self.encoder.settings(),
                "value_head": self.value_head, "value_head_options": self.head.options(),
                "decoder_norm": self.decoder_norm}
