"""Build sdkernels.

The C++ CPU kernels are always built.  The CUDA kernels are built when torch
is a CUDA build and nvcc is found (``FORCE_CUDA=1`` insists and fails loudly
otherwise; ``SDKERNELS_NO_CUDA=1`` skips them).  A build box needs no GPU:
``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0`` when none is visible.

Install with ``pip install --no-build-isolation .`` (``-e .`` for development) so the
extension is compiled against the torch already installed: the build needs that
torch, which is why pyproject.toml's build requirements do not name it (an
isolated build would compile against a torch of its own choosing).

``SDKERNELS_BUILD_EXT=0`` builds the pure-Python package: no compiler, no torch at
build time, seconds; it runs the reference backend (and Triton where it imports).
The metadata (name, version, dependencies) lives in pyproject.toml.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_EXT = os.environ.get("SDKERNELS_BUILD_EXT", "1") != "0"
# Every subpackage of sdkernels/, and triton_kernels/ installed as sdkernels.triton_kernels (a source tree
# may hold a link sdkernels/triton_kernels -> ../triton_kernels: it is not a package of its own).
PACKAGES = find_packages(include=["sdkernels", "sdkernels.*"], exclude=["sdkernels.triton_kernels*"])
PACKAGE_DIR = {"sdkernels.triton_kernels": "triton_kernels"}
PACKAGES.append("sdkernels.triton_kernels")


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


def _want_cuda(torch, cuda_home):
    if os.environ.get("SDKERNELS_NO_CUDA", "0") == "1":
        return False
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch is not a CUDA build")
    if cuda_home is None:
        reasons.append("nvcc was not found (set CUDA_HOME)")
    if reasons:
        if force:
            raise RuntimeError("FORCE_CUDA=1 but " + " and ".join(reasons))
        print("sdkernels: building without CUDA kernels: " + "; ".join(reasons))
        return False
    return True


def _extension_args():
    """setup()'s arguments for the compiled extension, built against the torch in this environment."""
    cuda_home = _find_cuda_home()
    if cuda_home is not None:
        # Must be set before torch.utils.cpp_extension is imported: it reads it once.
        os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
    except ImportError:
        sys.exit(
            "sdkernels: building the compiled extension needs torch in the build environment, and it must be the "
            "torch the package will run with.  Install torch first, then build without pip's isolated "
            "environment:\n    pip install --no-build-isolation .\n"
            "or install the pure-Python package (no compiler; reference and Triton backends):\n"
            "    SDKERNELS_BUILD_EXT=0 pip install ."
        )
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # The extension uses no pybind11 and no libtorch_python (its ops register with the dispatcher; its module
    # init is plain C API): one abi3 wheel serves every CPython the torch supports.  torch compiles it with
    # Py_LIMITED_API set to its oldest CPython (min_supported_cpython), which names the wheel's tag.
    # torch < 2.6 has no such switch.
    # Only for builds without the CUDA kernels for now: the abi3 CUDA build has not been verified yet.
    limited_api = (tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 6)
                   and not _want_cuda(torch, cuda_home))
    oldest = int(getattr(cpp_extension, "min_supported_cpython", "0x03090000"), 16)
    abi3_tag = f"cp{oldest >> 24}{(oldest >> 16) & 0xFF}"
    return {
        "ext_modules": _extensions(torch, cuda_home, CppExtension, CUDAExtension, limited_api),
        "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)},
        "options": {"bdist_wheel": {"py_limited_api": abi3_tag}} if limited_api else {},
    }


def _extensions(torch, cuda_home, CppExtension, CUDAExtension, limited_api):
    # csrc/ops.cpp (the module), csrc/ops/ (schemas), csrc/autograd/, csrc/composite/ (the eager fast
    # path's draw + op), csrc/cpu/ (kernels) and csrc/testing/ (test-only hooks, their own op namespace).
    cpp_sources = sorted(
        glob.glob("csrc/*.cpp")
        + glob.glob("csrc/ops/*.cpp")
        + glob.glob("csrc/autograd/*.cpp")
        + glob.glob("csrc/composite/*.cpp")
        + glob.glob("csrc/cpu/*.cpp")
        + glob.glob("csrc/testing/*.cpp")
    )
    # The C++ standard is the one torch asks for.  -fopenmp: at::parallel_for is
    # inlined from ATen's headers and runs serially unless the extension itself
    # is compiled with OpenMP (torch's CPU build uses the OpenMP backend).
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if _want_cuda(torch, cuda_home):
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
                py_limited_api=limited_api,
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
            py_limited_api=limited_api,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


setup(packages=PACKAGES, package_dir=PACKAGE_DIR, **(_extension_args() if BUILD_EXT else {}))
