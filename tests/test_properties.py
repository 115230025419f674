"""Property-based tests (hypothesis) of every public function on the C++ CPU backend against sdkernels.reference.

Shapes of 1 to 4 dims (odd sizes, size-1 and empty dims), layouts (transposed,
channels_last, slices with a step, expanded, storage offsets), sample and
channel dims (negative too), dtypes and mixed dtypes, p in [0, 1], both modes,
scale_by_keep, training, and the gradients of every input.  The cases and
checks are in tests/_property_cases.py; the same properties run on the Triton
backend in tests/test_properties_triton_interpret.py.  Derandomized (the same
examples every run) and bounded: small tensors, a few dozen examples each.
"""
import pytest
import torch

pytest.importorskip("hypothesis")

import sdkernels  # noqa: E402
import _property_cases as C  # noqa: E402

pytestmark = pytest.mark.skipif("cpu" not in sdkernels.available_backends(), reason="the C++ CPU backend is not built")

globals().update(C.property_tests("cpu", max_numel=1024, max_examples=100))


def test_strategies_reach_the_layouts():
    """The layouts the strategies promise are real: each kind gives its strides."""
    shape = (3, 5, 6, 7)
    t = {k: C.make(shape, torch.float32, (k, a), 0) for k, a in
         [("contiguous", None), ("permuted", (3, 1, 0, 2)), ("channels_last", None), ("step", 2), ("expanded", 1),
          ("offset", None)]}
    assert all(x.shape == shape for x in t.values())
    assert t["contiguous"].is_contiguous() and not t["permuted"].is_contiguous()
    assert t["channels_last"].is_contiguous(memory_format=torch.channels_last)
    assert t["step"].stride(2) == 2 * 7 and not t["step"].is_contiguous()
    assert t["expanded"].stride(1) == 0
    assert t["offset"].storage_offset() == 1
    s = C.make((4, 3), torch.bfloat16, ("contiguous", None), 0, sample_offsets=(0, 3.0))
    assert len({tuple(r.tolist()) for r in s}) == 4
