"""The raw ``torch.ops.sdkernels`` ops check their inputs as ATen ops do.

Every tensor argument must be on the kernel's device, and a bad one raises a
ValueError naming it.  The CPU kernels are called directly here (a redispatch to
the CPU key) with one argument on the meta device, the only other device a
CPU-only machine has: the kernels must refuse it before reading its (absent)
memory.  Scalars and dtypes: add_norm's eps must be finite and >= 0 and alpha
finite (ValueError); add_norm_backward's mean must be floating point like rstd
(TypeError).
"""
import math
import re

import pytest
import torch

import sdkernels  # noqa: F401  (loads the extension and its ops)
from sdkernels._ext import HAS_EXT

pytestmark = pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")

OPS = torch.ops.sdkernels
CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _scale(n=4):
    return torch.tensor([1.25, 0.0, 2.0, 0.5][:n])


def _add_norm_backward_args():
    r, b, w, bias, g = _randn(4, 3, 8, seed=1), _randn(4, 3, 8, seed=2), _randn(8, seed=3), _randn(8, seed=4), _randn(8, seed=5)
    x, _, mean, rstd = OPS.add_norm(r, b, _scale(), w, bias, g, 0, 1.0, 1e-5, False)
    return dict(grad_x=_randn(4, 3, 8, seed=6), grad_h=_randn(4, 3, 8, seed=7), x=x, mean=mean, rstd=rstd,
                scale=_scale(), weight=w, gamma=g, branch=b, sample_dim=0, alpha=1.0, rms=False,
                residual_dtype=torch.float32, branch_dtype=torch.float32, weight_dtype=torch.float32,
                bias_dtype=torch.float32)


# op name -> (a builder of valid keyword arguments, the op's tensor arguments)
CASES = {
    "scaled_residual_add": (lambda: dict(residual=_randn(4, 3, 5, seed=1), branch=_randn(4, 3, 5, seed=2),
                                         scale=_scale(), sample_dim=0, alpha=1.5),
                            ["residual", "branch", "scale"]),
    "sample_scale": (lambda: dict(x=_randn(4, 3, 5), scale=_scale(), sample_dim=0, alpha=1.5),
                     ["x", "scale"]),
    "scaled_index_add": (lambda: dict(residual=_randn(4, 3, 5, seed=1), src=_randn(2, 3, 5, seed=2),
                                      index=torch.tensor([3, 0]), sample_dim=0, alpha=2.0),
                         ["residual", "src", "index"]),
    "index_scale": (lambda: dict(grad=_randn(4, 3, 5), index=torch.tensor([3, 0]), sample_dim=0, alpha=2.0),
                    ["grad", "index"]),
    "scaled_residual_add_ls": (lambda: dict(residual=_randn(4, 3, 5, seed=1), branch=_randn(4, 3, 5, seed=2),
                                            scale=_scale(), gamma=_randn(5, seed=3), sample_dim=0, channel_dim=-1,
                                            alpha=1.5),
                               ["residual", "branch", "scale", "gamma"]),
    "sample_scale_ls": (lambda: dict(x=_randn(4, 3, 5), scale=_scale(), gamma=_randn(5, seed=3), sample_dim=0,
                                     channel_dim=-1, alpha=1.5),
                        ["x", "scale", "gamma"]),
    "layer_scale_grads": (lambda: dict(grad=_randn(4, 3, 5, seed=1), branch=_randn(4, 3, 5, seed=2), scale=_scale(),
                                       gamma=_randn(5, seed=3), sample_dim=0, channel_dim=-1, alpha=1.5),
                          ["grad", "branch", "scale", "gamma"]),
    "add_norm": (lambda: dict(residual=_randn(4, 3, 8, seed=1), branch=_randn(4, 3, 8, seed=2), scale=_scale(),
                              weight=_randn(8, seed=3), bias=_randn(8, seed=4), gamma=_randn(8, seed=5),
                              sample_dim=0, alpha=1.5, eps=1e-5, rms=False),
                 ["residual", "branch", "scale", "weight", "bias", "gamma"]),
    "add_norm_backward": (_add_norm_backward_args,
                          ["x", "grad_x", "grad_h", "mean", "rstd", "scale", "weight", "gamma", "branch"]),
}


def _cpu_kernel(name, kwargs):
    return getattr(OPS, name).default.redispatch(CPU_KEYS, **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_kernel_reached_directly_matches_the_op(name):
    """The direct call used below runs the CPU kernel: same result as the op (the checks' baseline)."""
    build, _ = CASES[name]
    got, exp = _cpu_kernel(name, build()), getattr(OPS, name)(**build())
    got, exp = (got, exp) if isinstance(got, tuple) else ((got,), (exp,))
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name,arg", [(n, a) for n, (_, args) in CASES.items() for a in args])
def test_cpu_kernel_refuses_a_tensor_on_another_device(name, arg):
    build, _ = CASES[name]
    kwargs = build()
    kwargs[arg] = kwargs[arg].to("meta")
    with pytest.raises(ValueError, match=rf"\b{arg} is on meta\b"):
        _cpu_kernel(name, kwargs)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("eps", [-1e-5, -math.inf, math.inf, math.nan])
def test_add_norm_refuses_a_negative_or_non_finite_eps(eps, requires_grad):
    kwargs = CASES["add_norm"][0]()
    kwargs["branch"].requires_grad_(requires_grad)
    kwargs["eps"] = eps
    with pytest.raises(ValueError, match=re.escape(f"eps must be a finite number >= 0, got {eps!r}")):
        OPS.add_norm(**kwargs)


def test_add_norm_takes_eps_zero():
    kwargs = CASES["add_norm"][0]()
    kwargs["eps"] = 0.0
    x, h, mean, rstd = OPS.add_norm(**kwargs)
    assert torch.isfinite(h).all() and torch.isfinite(rstd).all()


@pytest.mark.parametrize("name", ["add_norm", "add_norm_backward"])
@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
def test_add_norm_refuses_a_non_finite_alpha(name, alpha):
    kwargs = CASES[name][0]()
    kwargs["alpha"] = alpha
    with pytest.raises(ValueError, match=re.escape(f"alpha must be finite, got {alpha!r}")):
        getattr(OPS, name)(**kwargs)


@pytest.mark.parametrize("arg", ["mean", "rstd"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float16, torch.bool])
def test_add_norm_backward_statistics_must_be_float32_or_float64(arg, dtype):
    kwargs = _add_norm_backward_args()
    kwargs[arg] = (kwargs[arg] * 4).to(dtype)  # *4: an integer cast that keeps nonzero values
    with pytest.raises(TypeError, match=rf"{arg} must be float32 or float64"):
        OPS.add_norm_backward(**kwargs)
