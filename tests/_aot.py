"""Ahead-of-time compile of a Triton kernel for a GPU target, no GPU needed (shared by the AOT tests).

The kernel is compiled from its AST with its arguments specialised as
Triton's runtime specialises them for aligned tensors: ``tt.divisibility`` 16
on every pointer and on the chosen integer arguments.
"""
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

#: dtype name -> Triton pointer type
PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}


def aot_ptx(name, kern, ptr_types, arch, consts, num_warps=8, divisible=None):
    """PTX of ``kern`` (named ``name`` in messages) for ``sm_<arch>``; asserts a cubin was built too.

    Arguments as in :func:`aot_asm`.
    """
    return aot_asm(name, kern, ptr_types, arch, consts, num_warps, divisible)["ptx"]


_TENSOR_ADDPTR = re.compile(r"tt\.addptr [^:]*: tensor<[^>]*!tt\.ptr<[^>]*>>, tensor<[0-9x]*x(i\d+)>")


def tensor_offset_types(ttir):
    """Element types of the offsets in every tensor-of-pointers ``tt.addptr`` of a TTIR listing.

    ``{"i64"}`` means every vector of addresses is formed from 64-bit offsets.
    """
    return set(_TENSOR_ADDPTR.findall(ttir))


def aot_asm(name, kern, ptr_types, arch, consts, num_warps=8, divisible=None):
    """Every stage of ``kern`` compiled for ``sm_<arch>`` (``ttir``, ``ptx``, ...); asserts a cubin was built.

    ``ptr_types``: every pointer argument -> its Triton type (``"*bf16"``, ``"*i64"``);
    ``consts``: the constexpr arguments' values; arguments named ``a_*`` are fp32,
    the rest i32.  ``divisible``: the integer arguments specialised as multiples
    of 16 (None: all of them).
    """
    sig, attrs = {}, {}
    for i, arg in enumerate(kern.arg_names):
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg in ptr_types:
            sig[arg] = ptr_types[arg]
        elif arg.endswith("_ptr"):
            raise KeyError(f"{name}: no type given for pointer argument {arg}")
        elif arg.startswith("a_"):
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
        if sig[arg].startswith("*") or (sig[arg] == "i32" and (divisible is None or arg in divisible)):
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kern, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    assert compiled.asm.get("cubin"), f"{name}: no cubin for sm_{arch}"
    return compiled.asm
