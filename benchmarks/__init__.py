"""sdkernels benchmark suite.

``python -m benchmarks`` runs the default suite on the visible device and
writes CSV, table and PNGs under ``benchmarks/results/``; ``python -m
benchmarks --help`` lists the flags, ``--list`` the names.  Modules:

- :mod:`benchmarks.sizes`: named sizes, dtypes, default cases;
- :mod:`benchmarks.providers`: the implementations compared and the bytes they move;
- :mod:`benchmarks.timing`: timers (torch.utils.benchmark, CUDA events, wall clock) and peak memory;
- :mod:`benchmarks.opsuite`: the op suite; :mod:`benchmarks.e2e`: the ViT-B block step;
- :mod:`benchmarks.report`: the row schema, CSV, table, headline;
- :mod:`benchmarks.plot`: PNGs from a CSV (``python -m benchmarks.plot file.csv``);
- ``benchmarks/blocks.py``: the skip-path block suite, ``--suite blocks``;
- ``benchmarks/gpu_check.sh``: the one-shot check of a GPU machine.
"""
