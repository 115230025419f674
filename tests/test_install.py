"""An import that never breaks, and what an installed package holds.

Each broken-extension case runs in its own process on a temporary copy of the package laid out as an
installed one (``sdkernels/`` with ``triton_kernels/`` as ``sdkernels/triton_kernels``), its compiled
extension removed, damaged, replaced by one built against another torch, or raising while it loads.  The
import must warn once naming the cause and the fix, register only the pure-Python backends, and compute what
the reference computes; the selfcheck must say the extension is not loaded and still pass.
"""
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import sdkernels
from sdkernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

#: Run first in every child: an editable install of sdkernels in this environment (``pip install -e .``, as
#: ``make install`` does) adds an import hook that would find its own ``sdkernels._C`` for the copy; an
#: installed package has no such hook.
UNHOOK = textwrap.dedent("""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__name__", "").startswith("_Editable")]
""")

#: The child's checks: one RuntimeWarning from sdkernels on import, the backends of every family, and the
#: public functions and modules against the reference (the same generator seed draws the same samples).
CHILD = UNHOOK + textwrap.dedent("""
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sdkernels
    import torch
    from sdkernels import reference
    from sdkernels.functional import TABLES
    r = torch.randn(6, 5, 16)
    b = torch.randn(6, 5, 16, requires_grad=True)
    g = torch.Generator().manual_seed(7)
    out = sdkernels.drop_path_add(r, b, 0.4, generator=g)
    out.sum().backward()
    g = torch.Generator().manual_seed(7)
    b_ref = b.detach().clone().requires_grad_(True)
    exp = reference.drop_path_add(r, b_ref, 0.4, generator=g)
    exp.sum().backward()
    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    mod = sdkernels.nn.DropPathAdd(0.25)
    y = mod(r, model(r))
    print(json.dumps({
        "file": sdkernels.__file__,
        "warnings": [str(w.message) for w in caught
                     if issubclass(w.category, RuntimeWarning) and "sdkernels" in str(w.message)],
        "has_ext": sdkernels._ext.HAS_EXT,
        "status": sdkernels._ext.status(),
        "backends": {family: list(sdkernels.available_backends(family)) for family in TABLES},
        "max_err": float((out - exp).abs().max()),
        "max_grad_err": float((b.grad - b_ref.grad).abs().max()),
        "module_shape": list(y.shape),
    }))
""")


def _installed_copy(tmp_path) -> str:
    """A copy of the package as pip installs it, without its compiled extension; returns its package dir."""
    site = tmp_path / "site"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "triton_kernels")
    shutil.copytree(os.path.join(ROOT, "sdkernels"), site / "sdkernels", ignore=skip)
    shutil.copytree(os.path.join(ROOT, "triton_kernels"), site / "sdkernels" / "triton_kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(site / "sdkernels")


def _other_torch_extension(pkg: str) -> None:
    """An extension as one built against another torch looks to the loader: it needs a symbol this torch
    does not export, so loading it fails with "undefined symbol"."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the stand-in extension")
    src = os.path.join(pkg, "stub.c")
    with open(src, "w") as f:
        f.write("extern void _ZN3c1017sdkernels_test_symbol_from_another_torchEv(void);\n"
                "void *PyInit__C(void) { _ZN3c1017sdkernels_test_symbol_from_another_torchEv(); return 0; }\n")
    subprocess.run([cc, "-shared", "-fPIC", src, "-o", os.path.join(pkg, "_C" + SUFFIX)], check=True)
    os.remove(src)


def _break(pkg: str, case: str) -> None:
    if case == "missing":
        return
    if case == "corrupt":
        with open(os.path.join(pkg, "_C" + SUFFIX), "wb") as f:
            f.write(os.urandom(4096))
    elif case == "other_torch":
        _other_torch_extension(pkg)
    elif case == "raises":
        # A load that fails past the loader (an op registration that clashes raises RuntimeError).
        with open(os.path.join(pkg, "_C.py"), "w") as f:
            f.write("raise RuntimeError('Tried to register an operator with the same name twice')\n")


def _run(pkg: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(pkg))
    env.pop("SDKERNELS_DISABLE_EXT", None)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *args], env=env, cwd=os.path.dirname(pkg), capture_output=True,
                          text=True, timeout=300)


CAUSES = {
    "missing": "not installed",
    "corrupt": "failed to load",
    "other_torch": "built against another torch",
    "raises": "failed to load",
}


@pytest.mark.parametrize("case", sorted(CAUSES))
def test_import_falls_back_to_the_pure_python_backends(tmp_path, case):
    pkg = _installed_copy(tmp_path)
    _break(pkg, case)
    res = _run(pkg, "-c", CHILD)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(pkg), got["file"]
    assert not got["has_ext"]
    assert len(got["warnings"]) == 1, got["warnings"]
    warning = got["warnings"][0]
    assert CAUSES[case] in warning and "--no-build-isolation" in warning, warning
    assert got["status"].startswith("not loaded: ") and CAUSES[case] in got["status"]
    for family, names in got["backends"].items():
        assert "reference" in names, (family, names)
        assert not {"cpu", "cuda"} & set(names), (family, names)
    assert got["max_err"] <= 1e-6 and got["max_grad_err"] <= 1e-6, got
    assert got["module_shape"] == [6, 5, 16]


def test_selfcheck_reports_a_missing_extension(tmp_path):
    pkg = _installed_copy(tmp_path)
    res = _run(pkg, "-c", UNHOOK + "import runpy; runpy.run_module('sdkernels', run_name='__main__')")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "extension: not loaded" in res.stdout, res.stdout
    assert "cpu   reference  ok" in res.stdout, res.stdout


@pytest.mark.skipif(not _ext.HAS_EXT, reason="the compiled extension is not built")
def test_selfcheck_reports_the_loaded_extension():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-m", "sdkernels"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "extension: loaded" in res.stdout, res.stdout
    assert "cpu   cpu        ok" in res.stdout, res.stdout


def test_version_matches_the_metadata():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("needs tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert meta["project"]["name"] == "sdkernels"
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sdkernels.__version__"}
    assert all(part.isdigit() for part in sdkernels.__version__.split(".")), sdkernels.__version__
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert f"## {sdkernels.__version__}" in f.read(), "CHANGELOG.md has no section for this version"
