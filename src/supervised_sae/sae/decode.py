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
    and x_hat = free_part + z_rel W_dec_rel + b_dec, touching only the active rows.

    A k-sparse code of 10^5 slots has k x rows triples: gathering those rows of W_dec
    replaces three batch x d x slots products (decode, its two gradients) with work of
    k x rows x d. The backward writes W_dec's gradient once (active rows and relation
    rows), where autograd's gather would zero-fill and add a full-size gradient per use.
    z_rel may have no columns (a code without relation slots, or AuxK's dead slots).
    """

    @staticmethod
    def forward(ctx, values, rows, slots, z_rel, w_dec, b_dec, n_rows: int):
        n_free = w_dec.shape[0] - z_rel.shape[1]
        gathered = w_dec.index_select(0, slots)
        free_part = torch.zeros(n_rows, w_dec.shape[1], dtype=w_dec.dtype,
                                device=w_dec.device)
        free_part.index_add_(0, rows, gathered * values.unsqueeze(1).to(w_dec.dtype))
        x_hat = free_part + b_dec
        if z_rel.shape[1]:
            x_hat = x_hat + z_rel.to(w_dec.dtype) @ w_dec[n_free:]
        ctx.save_for_backward(values, rows, slots, z_rel, w_dec, gathered)
        ctx.n_free = n_free
        return x_hat, free_part

    @staticmethod
    def backward(ctx, g_x_hat, g_free):
        values, rows, slots, z_rel, w_dec, gathered = ctx.saved_tensors
        n_free = ctx.n_free
        if g_x_hat is None:
            g_x_hat = torch.zeros_like(g_free)
        g_all = g_x_hat if g_free is None else g_x_hat + g_free
        g_rows = g_all.index_select(0, rows)  # each triple's upstream gradient
        grad_values = grad_z_rel = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_values = (g_rows * gathered).sum(1).to(values.dtype)
        if ctx.needs_input_grad[3] and z_rel.shape[1]:
            grad_z_rel = (g_x_hat @ w_dec[n_free:].t()).to(z_rel.dtype)
        if ctx.needs_input_grad[4]:
            grad_w = torch.zeros_like(w_dec)
            grad_w.index_add_(0, slots, g_rows * values.unsqueeze(1).to(w_dec.dtype))
            if z_rel.shape[1]:
                grad_w[n_free:] += z_rel.t().to(w_dec.dtype) @ g_x_hat
        if ctx.needs_input_grad[5]:
            grad_b = g_x_hat.sum(0)
        return grad_values, None, None, grad_z_rel, grad_w, grad_b, None
