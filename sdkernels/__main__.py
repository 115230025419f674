"""``python -m sdkernels``: print the backends and check each against the reference."""
import sys

import torch

import sdkernels
from sdkernels import _ext, reference
from sdkernels.functional import CORE, LAYER_SCALE


def main() -> int:
    print(f"sdkernels {sdkernels.__version__}, torch {torch.__version__}")
    print("extension:", _ext.status())
    print("available backends:", ", ".join(sdkernels.available_backends()))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ok = True
    for device in devices:
        r = torch.randn(8, 3, 37, device=device)
        b = torch.randn(8, 3, 37, device=device, dtype=torch.bfloat16)
        keep = torch.tensor([1.0, 0, 1, 1, 0, 1, 0, 1], device=device)
        gamma = torch.linspace(0.5, 1.5, 37, device=device)
        exp = reference.scaled_residual_add(r, b, keep, 0, 1 / 0.7)
        exp_ls = reference.scaled_residual_add_ls(r, b, keep, gamma, 0, -1, 1 / 0.7)
        for name in sdkernels.available_backends():
            be = CORE[name]
            if not be.runs_on(device):
                continue
            out = be.residual_add(r, b, keep, 0, 1 / 0.7)
            good = torch.allclose(out, exp, rtol=1e-5, atol=1e-5)
            ls = LAYER_SCALE.get(name)
            if ls is not None and ls.runs_on(device):
                good &= torch.allclose(ls.residual_add_ls(r, b, keep, gamma, 0, -1, 1 / 0.7), exp_ls, rtol=1e-5, atol=1e-5)
            ok &= good
            print(f"  {device:5s} {name:10s} {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
