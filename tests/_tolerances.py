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


#: Machine epsilon (spacing at 1) and unit roundoff (half of it) by dtype.
_EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
#: Unit roundoff of the dtype a kernel accumulates a result of this dtype in (fp32 for 16-bit and fp32 results).
ACC_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-24}


def _assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    """|actual - expected| <= bound elementwise (in float64), finite where expected is; names the worst miss."""
    a, e = actual.double(), expected.double()
    assert bool((torch.isfinite(a) == torch.isfinite(e)).all()), "non-finite values differ"
    err = (a - e).abs()
    bad = ~(err <= bound)
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {a.numel()} sums off: worst error {float((err / bound)[bad].max()):.2f}x the bound; "
        f"actual {a[bad][:4].tolist()} expected {e[bad][:4].tolist()}")


def assert_close_reduction(actual: torch.Tensor, expected64: torch.Tensor, sumsq64: torch.Tensor, n: int,
                           acc_dtype: torch.dtype):
    """A sum of ``n`` terms per entry (a gamma gradient) against its float64 value.

    Kernels and reference add the same terms in different orders, in ``acc_dtype``:
    the difference is a random walk of roundings, bounded here by
    ``8 * eps(acc) * sqrt(n) * sqrt(sum of squared terms)`` (``sumsq64``), plus
    one rounding to ``actual``'s dtype.  A lost or doubled row of terms moves
    the sum by about ``sqrt(row length)`` terms, far past that.
    """
    e = expected64.double()
    bound = 8 * _EPS[acc_dtype] * (max(n, 1) ** 0.5) * sumsq64.double().sqrt() + _EPS[actual.dtype] * e.abs() + 1e-30
    _assert_within(actual, e, bound)


def assert_close_sum(actual: torch.Tensor, expected: torch.Tensor, term_norm: torch.Tensor, *, dtype=None):
    """A sum of many terms (a parameter gradient summed over rows), elementwise against an exact expectation.

    Allowed: the result's own tolerance (TOL) plus what accumulating the terms in the math
    dtype may add: 8 unit roundoffs at the scale of the terms' 2-norm ``term_norm`` (per
    element), the error of a blocked or pairwise fp32 sum (its partial sums grow to about
    that norm; a plain left-to-right sum of n terms may be off by ~sqrt(n) times more).
    """
    tol = TOL[dtype or expected.dtype]
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    e = expected.double()
    bound = tol["atol"] + tol["rtol"] * e.abs() + 8 * ACC_EPS[expected.dtype] * term_norm.double()
    _assert_within(actual, e, bound)
