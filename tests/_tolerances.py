"""Tolerances by dtype, shared by the test files (not a reference: only how close is close enough).

fp32 / fp64: a few units in the last place (kernels may fuse the multiply-add).
fp16 / bf16: one rounding of the output (kernel and reference both compute in
fp32 and round once; they may land on neighbouring representable values).
"""
import torch

TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=9.8e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=7.9e-3, atol=1e-4),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype=None, **kw):
    """torch.testing.assert_close with the tolerance of ``dtype`` (default: expected's), NaN equal."""
    tol = dict(TOL[dtype or expected.dtype])
    tol.update(kw)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)
