"""Spec of the add + norm ops: drop path, residual add, LayerNorm / RMSNorm.

``sdkernels::add_norm`` / ``add_norm_backward``: ``x`` is the fused drop-path add (with an
optional LayerScale ``gamma`` over the last dim), ``h`` the norm of ``x`` *as stored*
(after its rounding to x's dtype) over the last dim, in the math dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dtypes import add_norm_dtypes, opt_dtype
from .core import per_sample, scaled_residual_add
from .layer_scale import scaled_residual_add_ls

__all__ = ["NORMS", "norm_rows", "add_norm", "norm_stats", "add_norm_backward"]

NORMS = ("layer", "rms")


def norm_rows(x: torch.Tensor, weight, bias, eps: float, rms: bool, acc: torch.dtype) -> torch.Tensor:
    """``F.layer_norm`` / ``F.rms_norm`` (+ bias) of ``x`` over its last dim, computed in ``acc``; differentiable."""
    import torch.nn.functional as F

    H = x.shape[-1]
    xa = x.to(acc)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    if rms:
        h = F.rms_norm(xa, (H,), w, eps)
        return h if b is None else h + b
    return F.layer_norm(xa, (H,), w, b, eps)


def add_norm(
    residual: torch.Tensor,
    branch: torch.Tensor,
    scale: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    sample_dim: int,
    alpha: float,
    eps: float,
    rms: bool,
    out_dtype: Optional[torch.dtype] = None,
):
    """Spec of ``torch.ops.sdkernels.add_norm`` (its ``x`` and ``h``; the op also returns mean and rstd).

    ``x`` = :func:`scaled_residual_add` (:func:`scaled_residual_add_ls` with ``gamma``, on the last dim);
    ``h`` = :func:`norm_rows` of ``x`` as stored, in the math dtype, rounded once to ``out_dtype``
    (default x's dtype).  Differentiable.
    """
    x_dtype, acc = add_norm_dtypes(residual.dtype, branch.dtype, opt_dtype(gamma), opt_dtype(weight),
                                   opt_dtype(bias), out_dtype)
    # x in the op's math dtype (fp64 when a weight, bias or out_dtype is fp64), rounded once to x's dtype;
    # the inputs are widened exactly, so with fp32 math this is scaled_residual_add(_ls) itself.
    r, b = residual.to(acc), branch.to(acc)
    if gamma is None:
        x = scaled_residual_add(r, b, scale, sample_dim, alpha)
    else:
        x = scaled_residual_add_ls(r, b, scale, gamma.to(acc), sample_dim, -1, alpha)
    x = x.to(x_dtype)
    h = norm_rows(x, weight, bias, eps, rms, acc)
    return x, h.to(x.dtype if out_dtype is None else out_dtype)


def norm_stats(x: torch.Tensor, eps: float, rms: bool, acc: torch.dtype):
    """``(xhat, rstd)`` of x's rows in ``acc``: LayerNorm ``((x - mean) * rstd, 1 / sqrt(var + eps))``
    or RMSNorm ``(x * rstd, 1 / sqrt(mean(x^2) + eps))`` (rstd keeps a trailing dim of 1); differentiable."""
    xa = x.to(acc)
    if rms:
        rstd = torch.rsqrt((xa * xa).mean(-1, keepdim=True) + eps)
        return xa * rstd, rstd
    d = xa - xa.mean(-1, keepdim=True)
    rstd = torch.rsqrt((d * d).mean(-1, keepdim=True) + eps)
    return d * rstd, rstd


def add_norm_backward(
    grad_x: Optional[torch.Tensor],
    grad_h: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    branch: Optional[torch.Tensor],
    sample_dim: int,
    alpha: float,
    eps: float,
    rms: bool,
    residual_dtype: torch.dtype,
    branch_dtype: torch.dtype,
    acc: Optional[torch.dtype] = None,
):
    """Spec of the add + norm backward: ``(grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma)``.

    In the math dtype (``acc``, default the op's; ``torch.float64`` gives a high-precision
    expectation), with ``xhat``, ``rstd`` of x as stored (:func:`norm_stats`) and
    ``dy = grad_h * weight``::

        dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) + grad_x     (LayerNorm)
        dx = rstd * (dy - xhat * mean(dy * xhat)) + grad_x                 (RMSNorm)
        grad_residual = dx
        grad_branch   = (dx * m[s]) * gamma      kept samples, zeros on dropped ones
        grad_weight   = sum over rows of grad_h * xhat     (None when weight is None)
        grad_bias     = sum over rows of grad_h            (None when bias is None)
        grad_gamma    = sum over kept rows of (dx * m[s]) * branch   (None when branch is None)

    each rounded once to its input's dtype.  Plain differentiable PyTorch ops: run with
    grad enabled the result is differentiable (double backward) through x, weight, the
    grads and branch.
    """
    if acc is None:
        _, acc = add_norm_dtypes(residual_dtype, branch_dtype, opt_dtype(gamma), opt_dtype(weight),
                                 opt_dtype(bias), grad_h.dtype, x.dtype)
    H = x.shape[-1]
    xhat, rstd = norm_stats(x, eps, rms, acc)
    g = grad_h.to(acc)
    dy = g if weight is None else g * weight.to(acc)
    c1 = (dy * xhat).mean(-1, keepdim=True)
    u = dy - xhat * c1 if rms else dy - dy.mean(-1, keepdim=True) - xhat * c1
    dx = rstd * u
    if grad_x is not None:
        dx = dx + grad_x.to(acc)
    dim = sample_dim % x.dim()
    s = per_sample(scale, x, dim, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    kept = s != 0
    zero = torch.zeros((), dtype=acc, device=x.device)
    dxm = torch.where(kept, dx * m, zero)
    g_branch = dxm if gamma is None else dxm * gamma.to(acc)
    g_gamma = None
    if gamma is not None and branch is not None:
        bk = torch.where(kept, branch.to(acc), zero)
        g_gamma = (dxm * bk).reshape(-1, H).sum(0).to(gamma.dtype)
    g_w = None if weight is None else (g * xhat).reshape(-1, H).sum(0).to(weight.dtype)
    g_b = None if bias is None else g.reshape(-1, H).sum(0).to(bias.dtype)
    return dx.to(residual_dtype), g_branch.to(branch_dtype), g_w, g_b, g_gamma

