"""Build sdkernels.

The C++ CPU kernels are always built.  The CUDA kernels are built when torch
is a CUDA build and nvcc is found (``FORCE_CUDA=1`` insists and fails loudly
otherwise; ``SDKERNELS_NO_CUDA=1`` skips them).  A build box needs no GPU:
``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0`` when none is visible.

Install with ``pip install --no-build-isolation -e .`` so the extension is
compiled against the torch already installed.
"""
import glob
import os
import shutil

from setuptools import setup


def _find_cuda_home():
    """CUDA_HOME from the environment, else the toolkit root that holds nvcc.

    torch guesses ``/usr/local`` when nvcc is found as /usr/local/bin/nvcc (a
    link or wrapper); the toolkit root is /usr/local/cuda or the real path of nvcc.
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return root if os.path.isdir(os.path.join(root, "include")) else None


_cuda_home = _find_cuda_home()
if _cuda_home is not None:
    # Must be set before torch.utils.cpp_extension is imported: it reads it once.
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    if os.environ.get("SDKERNELS_NO_CUDA", "0") == "1":
        return False
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch is not a CUDA build")
    if _cuda_home is None:
        reasons.append("nvcc was not found (set CUDA_HOME)")
    if reasons:
        if force:
            raise RuntimeError("FORCE_CUDA=1 but " + " and ".join(reasons))
        print("sdkernels: building without CUDA kernels: " + "; ".join(reasons))
        return False
    return True


def _extensions():
    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/composite/*.cpp"))
    # The C++ standard is the one torch asks for.  -fopenmp: at::parallel_for is
    # inlined from ATen's headers and runs serially unless the extension itself
    # is compiled with OpenMP (torch's CPU build uses the OpenMP backend).
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to query: build for A100 (sm_80) and H100/H200 (sm_90).
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        cu_sources = sorted(glob.glob("csrc/cuda/*.cu"))
        return [
            CUDAExtension(
                "sdkernels._C",
                cpp_sources + cu_sources,
                include_dirs=include_dirs,
                define_macros=[("SDKERNELS_WITH_CUDA", "1")],
                extra_link_args=link_flags,
                extra_compile_args={
                    "cxx": cxx_flags,
                    "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
                },
            )
        ]
    return [
        CppExtension(
            "sdkernels._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


setup(
    name="sdkernels",
    version="0.1.0",
    description="Fused stochastic depth (DropPath) kernels for PyTorch",
    packages=["sdkernels", "sdkernels.conversion", "sdkernels.triton_kernels"],
    package_dir={"sdkernels": "sdkernels", "sdkernels.triton_kernels": "triton_kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "expecttest"],
        "bench": ["matplotlib", "tqdm"],
    },
)
