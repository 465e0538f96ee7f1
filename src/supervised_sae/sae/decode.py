"""The decoder's fused forward and backward: the reconstruction and its free-slot part."""

from __future__ import annotations

import torch


class DecodeWithFreePart(torch.autograd.Function):
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


class SparseDecode(torch.autograd.Function):
    """free_part = sum over a sparse code's (row, slot, value) triples of value x W_dec[slot],
    and x_hat = free_part + z_rel W_dec_rel + b_dec, touching only the active rows; with
    a second set of triples (AuxK's dead slots), also their decode `aux_part` (no bias).

    A k-sparse code of 10^5 slots has k x rows triples: gathering those rows of W_dec
    replaces three batch x d x slots products (decode, its two gradients) with work of
    k x rows x d. The backward writes W_dec's gradient once for both sets of triples and
    the relation rows, where autograd would zero-fill and add a full-size gradient per
    use. z_rel may have no columns (a code without relation slots).
    """

    @staticmethod
    def forward(ctx, values, rows, slots, z_rel, w_dec, b_dec, n_rows: int,
                aux_values=None, aux_rows=None, aux_slots=None):
        n_free = w_dec.shape[0] - z_rel.shape[1]

        def gather_sum(vals, at_rows, at_slots):
            gathered = w_dec.index_select(0, at_slots)
            out = torch.zeros(n_rows, w_dec.shape[1], dtype=w_dec.dtype, device=w_dec.device)
            return out.index_add_(0, at_rows, gathered * vals.unsqueeze(1).to(w_dec.dtype)), \
                gathered

        free_part, gathered = gather_sum(values, rows, slots)
        x_hat = free_part + b_dec
        if z_rel.shape[1]:
            x_hat = x_hat + z_rel.to(w_dec.dtype) @ w_dec[n_free:]
        if aux_values is None:
            aux_part, aux_gathered = free_part.new_zeros(n_rows, 0), None
            aux_values = aux_rows = aux_slots = values.new_zeros(0)
        else:
            aux_part, aux_gathered = gather_sum(aux_values, aux_rows, aux_slots)
        ctx.save_for_backward(values, rows, slots, z_rel, w_dec, gathered, aux_values,
                              aux_rows, aux_slots, aux_gathered)
        ctx.n_free = n_free
        return x_hat, free_part, aux_part

    @staticmethod
    def backward(ctx, g_x_hat, g_free, g_aux):
        (values, rows, slots, z_rel, w_dec, gathered, aux_values, aux_rows, aux_slots,
         aux_gathered) = ctx.saved_tensors
        n_free = ctx.n_free
        if g_x_hat is None:
            g_x_hat = torch.zeros_like(g_free)
        g_all = g_x_hat if g_free is None else g_x_hat + g_free
        g_rows = g_all.index_select(0, rows)  # each triple's upstream gradient
        with_aux = aux_gathered is not None and g_aux is not None
        g_aux_rows = g_aux.index_select(0, aux_rows) if with_aux else None
        grads = [None] * 10
        if ctx.needs_input_grad[0]:
            grads[0] = (g_rows * gathered).sum(1).to(values.dtype)
        if ctx.needs_input_grad[3] and z_rel.shape[1]:
            grads[3] = (g_x_hat @ w_dec[n_free:].t()).to(z_rel.dtype)
        if ctx.needs_input_grad[4]:
            grad_w = torch.zeros_like(w_dec)
            grad_w.index_add_(0, slots, g_rows * values.unsqueeze(1).to(w_dec.dtype))
            if with_aux:
                grad_w.index_add_(0, aux_slots,
                                  g_aux_rows * aux_values.unsqueeze(1).to(w_dec.dtype))
            if z_rel.shape[1]:
                grad_w[n_free:] += z_rel.t().to(w_dec.dtype) @ g_x_hat
            grads[4] = grad_w
        if ctx.needs_input_grad[5]:
            grads[5] = g_x_hat.sum(0)
        if with_aux and ctx.needs_input_grad[7]:
            grads[7] = (g_aux_rows * aux_gathered).sum(1).to(aux_values.dtype)
        return tuple(grads)


class EncodeLinear(torch.autograd.Function):
    """pre = x W_rows^T + b, W_rows = W_enc^T [slots, d_model]. When the gradient of pre
    is sparse (a TopK code passes it to k slots per row, AuxK to k_aux more), W's
    gradient is a row index_add over its nonzeros instead of a dense batch x d x slots
    product; otherwise that product."""

    MAX_DENSITY = 1 / 8

    @staticmethod
    def forward(ctx, x, w_rows, b):
        ctx.save_for_backward(x, w_rows)
        ctx.x_dtype = x.dtype
        return torch.addmm(b, x, w_rows.t())

    @staticmethod
    def backward(ctx, grad):
        x, w_rows = ctx.saved_tensors
        # under autocast the forward ran in bf16; the gradients are the weights' dtype
        grad, x = grad.to(w_rows.dtype), x.to(w_rows.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ w_rows).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            if int(torch.count_nonzero(grad)) <= EncodeLinear.MAX_DENSITY * grad.numel():
                rows, slots = grad.nonzero(as_tuple=True)
                grad_w = torch.zeros_like(w_rows).index_add_(
                    0, slots, x.index_select(0, rows) * grad[rows, slots].unsqueeze(1))
            else:
                grad_w = grad.t() @ x
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b
