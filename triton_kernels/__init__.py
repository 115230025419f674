"""Triton kernels of sdkernels, installed as ``sdkernels.triton_kernels``.

(Not a top-level ``triton_kernels``: Triton's own kernel library owns that name.)
"""
