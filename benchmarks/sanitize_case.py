"""A small forward+backward of every sdkernels kernel, for ``compute-sanitizer --tool memcheck``.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python benchmarks/sanitize_case.py                     # CUDA: backends cuda and triton
    python benchmarks/sanitize_case.py --device cpu            # the same logic on the CPU backend

Odd shapes (tails, one block spanning rows, sample_dim 1, channels_last),
fp32/bf16/mixed dtypes, p in {0.5, 1}; both ops, forward and backward, each
checked against ``sdkernels.reference`` with the same seeded draw; the
LayerScale ops (``layer_scale=gamma``, every row-view kind, few
rows with many channels), output and the three gradients; then the
add + norm op on short, long (streaming / loop-path) and unaligned
rows, LayerNorm and RMSNorm with LayerScale, all five gradients; and the eager fast
paths (one C++ call that draws and applies: ``drop_path_add``, ``drop_path``,
LayerScale, add + norm with ``backend="auto"``), bit for bit against the full
path under one seed.  With the
caching allocator off (the variable above), an out-of-bounds access lands
outside its allocation, where memcheck sees it.  Exit status 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import sys

import torch

SHAPES = [
    ((7, 3, 5), 0, False),        # numel 105: tails everywhere
    ((4, 197, 33), 0, False),     # rows longer than a block
    ((5, 3, 17), 1, False),       # seq-first, sample_dim 1
    ((3, 6, 5, 4), 0, True),      # channels_last
    ((1, 1, 1), 0, False),        # one element
]
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)]
PS = (0.5, 1.0)


def _tol(dt):
    return (1.3e-6, 1e-5) if dt == torch.float32 else (8e-3, 8e-3)


def run(device: str, backends) -> int:
    import sdkernels
    from sdkernels import reference

    bad = 0
    n = 0
    for be in backends:
        for shape, sd, cl in SHAPES:
            for rd, bd in DTYPES:
                for p in PS:
                    g = torch.Generator(device="cpu").manual_seed(n)
                    r = torch.randn(shape, generator=g).to(device=device, dtype=rd)
                    b = torch.randn(shape, generator=g).to(device=device, dtype=bd)
                    if cl:
                        r = r.contiguous(memory_format=torch.channels_last)
                        b = b.contiguous(memory_format=torch.channels_last)
                    r.requires_grad_()
                    b.requires_grad_()
                    seed = 1000 + n
                    gen = torch.Generator(device=device).manual_seed(seed)
                    out = sdkernels.drop_path_add(r, b, p, sample_dim=sd, generator=gen, backend=be)
                    go = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
                    gr, gb = torch.autograd.grad(out, (r, b), go)
                    gen = torch.Generator(device=device).manual_seed(seed)
                    ref = reference.drop_path_add(r, b, p, sample_dim=sd, generator=gen)
                    rr, rb = torch.autograd.grad(ref, (r, b), go)
                    xo = sdkernels.drop_path(b, p, sample_dim=sd, generator=torch.Generator(device=device).manual_seed(seed),
                                             backend=be)
                    (gx,) = torch.autograd.grad(xo, (b,), go.to(bd))
                    xr = reference.drop_path(b, p, sample_dim=sd, generator=torch.Generator(device=device).manual_seed(seed))
                    (gxr,) = torch.autograd.grad(xr, (b,), go.to(bd))
                    pairs = [(out, ref), (gr, rr), (gb, rb), (xo, xr), (gx, gxr)]
                    for k, (a, e) in enumerate(pairs):
                        rtol, atol = _tol(a.dtype)
                        if a.dtype != e.dtype or not torch.allclose(a.float(), e.float(), rtol=rtol, atol=atol):
                            bad += 1
                            print(f"MISMATCH backend={be} shape={shape} sample_dim={sd} channels_last={cl} "
                                  f"dtypes={rd},{bd} p={p} output#{k}")
                    n += 1
    skip_path = getattr(sdkernels, "drop_path_residual", None)
    if skip_path is not None:  # the skip path, when it is there: memory safety only
        lin = torch.nn.Linear(33, 33).to(device)
        x = torch.randn(6, 7, 33, device=device, requires_grad=True)
        for be in [b for b in backends if b in sdkernels.available_backends("skip")]:
            try:
                y = skip_path(x, lin, 0.5, backend=be)
            except TypeError:
                y = skip_path(x, lin, 0.5)
            y.sum().backward()
            n += 1
    # ---- LayerScale: the three ops, forward and the three gradients ----
    n_ls, bad_ls = run_layer_scale(device, backends)
    n += n_ls
    bad += bad_ls
    n_fp, bad_fp = run_fast_paths(device)
    return _report(n + n_fp, bad + bad_fp, "cases", device, backends)


def run_fast_paths(device: str):
    """The eager fast paths (draw + op in one C++ call) against the full path (an explicit backend), same seed:
    outputs and gradients equal bit for bit.  ``(cases, mismatches)``."""
    import sdkernels

    full = "cuda" if device == "cuda" else "cpu"
    if full not in sdkernels.available_backends():
        return 0, 0
    n = bad = 0
    for shape, sd, cl in SHAPES[:3]:
        for rd, bd in DTYPES[::2]:
            g = torch.Generator(device="cpu").manual_seed(77 + n)
            r = torch.randn(shape, generator=g).to(device=device, dtype=rd).requires_grad_()
            b = torch.randn(shape, generator=g).to(device=device, dtype=bd).requires_grad_()
            gamma = torch.randn(shape[-1], generator=g).to(device).requires_grad_()
            w = torch.randn(shape[-1], generator=g).to(device).requires_grad_()
            calls = [
                lambda be: sdkernels.drop_path_add(r, b, 0.5, sample_dim=sd, backend=be),
                lambda be: sdkernels.drop_path(b, 0.5, sample_dim=sd, backend=be),
                lambda be: sdkernels.drop_path_add(r, b, 0.5, sample_dim=sd, layer_scale=gamma, backend=be),
                lambda be: sdkernels.drop_path_add_norm(r, b, 0.5, w, None, 1e-5, sample_dim=sd, backend=be)[1],
            ]
            for k, call in enumerate(calls):
                res = []
                for be in ("auto", full):
                    torch.manual_seed(1234 + n)
                    out = call(be)
                    go = torch.ones_like(out)
                    res.append([out.detach()] + list(torch.autograd.grad(out, (r, b, gamma, w), go, allow_unused=True)))
                for a, e in zip(*res):
                    if (a is None) != (e is None) or (a is not None and not torch.equal(a, e)):
                        bad += 1
                        print(f"MISMATCH fast path #{k} shape={shape} sample_dim={sd} dtypes={rd},{bd}")
                        break
                n += 1
    return n, bad


def _report(n: int, bad: int, what: str, device: str, backends) -> int:
    """The summary line (synchronised first: an asynchronous fault surfaces here); exit status 1 on a mismatch."""
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_case: {n} {what} on {device} (backends {', '.join(backends)}): "
          f"{'all match the reference' if not bad else f'{bad} MISMATCHES'}")
    return 1 if bad else 0


# (shape, sample_dim, channel_dim, channels_last): tokens with tails, channels_last and contiguous NCHW
# (gamma per column / per row), seq-first, a channel dim outside the sample dim, few rows with many channels.
LS_SHAPES = [
    ((7, 3, 37), 0, -1, False),
    ((3, 6, 5, 4), 0, 1, True),
    ((3, 6, 5, 7), 0, 1, False),
    ((5, 3, 17), 1, -1, False),
    ((6, 4, 5), 1, 0, False),
    ((2, 1, 3000), 0, -1, False),
]


def run_layer_scale(device: str, backends):
    """``drop_path_add(..., layer_scale=gamma)``: output and the residual's, branch's and gamma's gradients."""
    import sdkernels
    from sdkernels import reference

    bad = n = 0
    for be in backends:
        # One dtype pair and one p a shape, in turn (under the sanitizer every Triton
        # specialisation compiles first and every launch is slow: memcheck has 45 s).
        for i, (shape, sd, cd, cl) in enumerate(LS_SHAPES):
            for rd, bd in (DTYPES[i % len(DTYPES)],):
                for p in (PS[i % len(PS)],):
                    g = torch.Generator(device="cpu").manual_seed(500 + n)
                    r = torch.randn(shape, generator=g).to(device=device, dtype=rd)
                    b = torch.randn(shape, generator=g).to(device=device, dtype=bd)
                    if cl:
                        r = r.contiguous(memory_format=torch.channels_last)
                        b = b.contiguous(memory_format=torch.channels_last)
                    gamma = (0.5 + torch.rand(shape[cd], generator=g)).to(device)
                    r, b, gamma = (t.requires_grad_() for t in (r, b, gamma))
                    kw = dict(sample_dim=sd, layer_scale=gamma, channel_dim=cd)
                    out = sdkernels.drop_path_add(r, b, p, generator=torch.Generator(device=device).manual_seed(n),
                                                  backend=be, **kw)
                    go = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
                    got = (out,) + torch.autograd.grad(out, (r, b, gamma), go)
                    ref = reference.drop_path_add(r, b, p, generator=torch.Generator(device=device).manual_seed(n), **kw)
                    want = (ref,) + torch.autograd.grad(ref, (r, b, gamma), go)
                    for k, (a, e) in enumerate(zip(got, want)):
                        rtol, atol = _tol(a.dtype)
                        if k == 3:  # gamma's gradient: a sum over many terms
                            rtol, atol = 1e-4, 1e-3 * (a.numel() and float(e.abs().max()) + 1.0)
                        if a.dtype != e.dtype or not torch.allclose(a.float(), e.float(), rtol=rtol, atol=atol):
                            bad += 1
                            print(f"MISMATCH layer_scale backend={be} shape={shape} sample_dim={sd} channel_dim={cd} "
                                  f"channels_last={cl} dtypes={rd},{bd} p={p} output#{k}")
                    n += 1
    return n, bad


# ---- add + norm -----------------------------------------------------------------------
# Row lengths: short rows, a tail, rows past the CUDA register budget (streaming) and Triton's loop
# path (H > 16384); a storage offset of one element (unaligned rows: the scalar path).
NORM_SHAPES = [
    ((7, 3, 33), 1, 0),
    ((3, 2, 20000), 0, 0),
    ((4, 2, 64), 0, 1),
]
NORM_DTYPES = [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)]  # few: Triton compiles each


def _offset(t: torch.Tensor, off: int) -> torch.Tensor:
    if off == 0:
        return t
    buf = torch.empty(t.numel() + off, dtype=t.dtype, device=t.device)
    out = buf[off:].view(t.shape)
    out.copy_(t)
    return out


def run_add_norm(device: str, backends) -> int:
    """drop_path_add_norm forward + backward (all five gradients) against the reference, same draws."""
    import sdkernels
    from sdkernels import reference

    bad = n = 0
    for be in backends:
        for shape, sd, off in NORM_SHAPES:
            for rd, bd in NORM_DTYPES:
                for p in (0.5,):
                    for norm in ("layer", "rms"):
                        g = torch.Generator(device="cpu").manual_seed(n)
                        H = shape[-1]
                        r = _offset(torch.randn(shape, generator=g).to(device=device, dtype=rd), off).requires_grad_()
                        b = _offset(torch.randn(shape, generator=g).to(device=device, dtype=bd), off).requires_grad_()
                        w, bias, gm = (torch.randn(H, generator=g).to(device).requires_grad_() for _ in range(3))
                        if norm == "rms":
                            bias = None
                        ins = [t for t in (r, b, w, bias, gm) if t is not None]
                        outs, grads = [], None
                        for fn in (sdkernels.drop_path_add_norm, reference.drop_path_add_norm):
                            gen = torch.Generator(device=device).manual_seed(2000 + n)
                            kw = dict(norm=norm, sample_dim=sd, layer_scale=gm, generator=gen)
                            if fn is sdkernels.drop_path_add_norm:
                                kw["backend"] = be
                            x, h = fn(r, b, p, w, bias, 1e-5, **kw)
                            if grads is None:  # the same incoming gradients for both
                                grads = tuple(torch.randn(t.shape, generator=g).to(device=device, dtype=t.dtype)
                                              for t in (x, h))
                            outs.append([x, h] + list(torch.autograd.grad((x, h), ins, grads)))
                        for k, (a, e) in enumerate(zip(*outs)):
                            rtol, atol = _tol(a.dtype)
                            if a.dtype != e.dtype or not torch.allclose(a.float(), e.float(), rtol=rtol * 10,
                                                                        atol=atol * 10 + 1e-4 * H ** 0.5):
                                bad += 1
                                print(f"MISMATCH add_norm backend={be} shape={shape} sample_dim={sd} offset={off} "
                                      f"dtypes={rd},{bd} p={p} norm={norm} output#{k}")
                        n += 1
    return _report(n, bad, "add_norm cases", device, backends)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--backends", default=None, help="comma list (default: every available backend for the device)")
    a = ap.parse_args(argv)
    import sdkernels
    from sdkernels import functional

    if a.device == "cuda" and not torch.cuda.is_available():
        print("sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    if a.backends:
        backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    else:
        backends = []
        for name in sdkernels.available_backends():
            if name != "reference" and functional.CORE[name].runs_on(a.device):
                backends.append(name)
    if not backends:
        print(f"sanitize_case: no sdkernels backend for {a.device}; available: {sdkernels.available_backends()}",
              file=sys.stderr)
        return 2
    rc = run(a.device, backends)
    norm_backends = [name for name in sdkernels.available_backends("add_norm") if name != "reference"
                     and functional.ADD_NORM[name].runs_on(a.device)]
    if a.backends:
        norm_backends = [b for b in norm_backends if b in backends]
    return max(rc, run_add_norm(a.device, norm_backends)) if norm_backends else rc


if __name__ == "__main__":
    raise SystemExit(main())
