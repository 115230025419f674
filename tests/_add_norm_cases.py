"""Shared cases of the add + norm tests (tests/test_add_norm.py on CPU and CUDA,
tests/test_add_norm_triton_interpret.py under the Triton interpreter): inputs, the
forward check (x bit for bit against the core op and the reference, h within one
rounding) and the backward check (every gradient against the fp64 spec).
"""
import torch

import sdkernels
from sdkernels import reference as R
from _tolerances import assert_close, assert_close_sum


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _t(shape, dtype, device, g, scale=1.0, offset=0.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(device=device, dtype=dtype)


def _inputs(shape, rdt, bdt, device, seed=1, affine=(True, True), gamma=False, pdt=torch.float32):
    g = _gen(seed)
    H = shape[-1]
    r = _t(shape, rdt, device, g, offset=0.5)
    b = _t(shape, bdt, device, g)
    w = _t((H,), pdt, device, g, 0.5, 1.0) if affine[0] else None
    bias = _t((H,), pdt, device, g, 0.5) if affine[1] else None
    gm = _t((H,), pdt, device, g, 0.3, 0.5) if gamma else None
    return r, b, w, bias, gm


def _run(device, backend, r, b, p, w, bias, seed=3, **kw):
    return sdkernels.drop_path_add_norm(r, b, p, w, bias, generator=_gen(seed, device), backend=backend, **kw)


def _ref(device, r, b, p, w, bias, seed=3, **kw):
    return R.drop_path_add_norm(r, b, p, w, bias, generator=_gen(seed, device), **kw)


def _check_forward(device, backend, r, b, p, w, bias, **kw):
    x, h = _run(device, backend, r, b, p, w, bias, **kw)
    ex, eh = _ref(device, r, b, p, w, bias, **kw)
    core_kw = {k: v for k, v in kw.items() if k in ("mode", "scale_by_keep", "sample_dim", "training")}
    if kw.get("layer_scale") is None:
        # x is exactly the core op's output under the same seed (same draws, same rounding)
        core = sdkernels.drop_path_add(r, b, p, generator=_gen(3, device), backend=backend if backend != "triton"
                                       else "auto", **core_kw)
        assert torch.equal(x, core)
    assert torch.equal(x, ex)
    assert_close(h, eh)
    return x, h


def _grads(device, backend, r, b, p, w, bias, gm, gx, gh, **kw):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (r, b, w, bias, gm)]
    x, h = sdkernels.drop_path_add_norm(leaves[0], leaves[1], p, leaves[2], leaves[3], layer_scale=leaves[4],
                                        generator=_gen(3, device), backend=backend, **kw)
    outs, gos = [h], [gh]
    if gx is not None:
        outs.append(x)
        gos.append(gx)
    ins = [t for t in leaves if t is not None]
    got = torch.autograd.grad(outs, ins, gos)
    return x, dict(zip([i for i, t in enumerate(leaves) if t is not None], got))


def _expected_grads(device, x, r, b, p, w, bias, gm, gx, gh, norm="layer", sample_dim=0, mode="row",
                    eps=1e-5, scale_by_keep=True):
    """The spec's gradients in fp64, each rounded once to its input's dtype, and the 2-norms (over rows)
    of the terms each parameter gradient sums."""
    dim = sample_dim % r.dim()
    ddt, acc = R.drop_dtypes(r.dtype, b.dtype, None if gm is None else gm.dtype)
    keep = R.draw_keep(r.shape[dim], p, mode, device, _gen(3, device), ddt)
    alpha = R.keep_scale(p, scale_by_keep, acc)
    rms = norm == "rms"
    args = (gx, gh, x, keep, w, bias, gm, b if gm is not None else None, dim, alpha, eps, rms)
    exp = R.add_norm_backward(*args, r.dtype, b.dtype, acc=torch.float64)
    dx = R.add_norm_backward(*args, torch.float64, torch.float64, acc=torch.float64)[0]
    H = x.shape[-1]
    xhat = R.norm_rows(x, None, None, eps, rms, torch.float64).reshape(-1, H)
    g64 = gh.double().reshape(-1, H)
    shape = [1] * x.dim()
    shape[dim] = -1
    m = (keep.double() * alpha).reshape(shape)
    terms = {2: g64 * xhat, 3: g64, 4: (dx * m * b.double()).reshape(-1, H)}
    return dict(enumerate(exp)), {k: v.norm(dim=0) for k, v in terms.items()}


def _check_backward(device, backend, r, b, p, w, bias, gm=None, with_gx=True, **kw):
    g = _gen(21)
    xdt = R.add_norm_dtypes(r.dtype, b.dtype, None if gm is None else gm.dtype)[0]
    gh = _t(r.shape, kw.get("out_dtype") or xdt, device, g)
    gx = _t(r.shape, xdt, device, g) if with_gx else None
    x, got = _grads(device, backend, r, b, p, w, bias, gm, gx, gh, **kw)
    exp, norms = _expected_grads(device, x, r, b, p, w, bias, gm, gx, gh,
                                 **{k: v for k, v in kw.items() if k in ("norm", "sample_dim", "mode", "eps")})
    for i, t in got.items():
        e = exp[i]
        assert t.dtype == e.dtype, i
        if i >= 2:  # parameter gradients: sums over rows
            assert_close_sum(t, e, norms[i])
        else:
            assert_close(t, e)
    return got
