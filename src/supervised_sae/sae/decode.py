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
