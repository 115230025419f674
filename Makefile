# On a fresh machine:  make test   (set-up + the whole test suite)
#                      make bench  (set-up + the benchmark on whatever device is here)
# Both create a virtual environment in $(VENV), install requirements.txt and
# build the extension once (C++ CPU kernels always; CUDA kernels when torch is
# a CUDA build and nvcc is found).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdkernels-installed
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh)
ARGS ?=

.PHONY: install test test-main test-interpret bench selfcheck clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Two pytest processes: TRITON_INTERPRET is read when @triton.jit runs, so the
# Triton-interpreter tests cannot share a process with the rest.
test: test-main test-interpret

test-main: $(STAMP)
	$(PY) -m pytest -m "not triton_interpret" -q -ra

test-interpret: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -m triton_interpret -q -ra

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

selfcheck: $(STAMP)
	$(PY) -m sdkernels

clean:
	rm -rf build $(VENV) sdkernels/*.so *.egg-info
