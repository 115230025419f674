# On a fresh machine:  make test   (set-up + the test suite, heavy tests aside: under 15 minutes on 2 cores)
#                      make bench  (set-up + the benchmark on whatever device is here)
#                      make test-heavy  (the tests marked heavy in tests/conftest.py; CI runs it after make test)
# Both create a virtual environment in $(VENV), install requirements.txt and
# build the extension once (C++ CPU kernels always; CUDA kernels when torch is
# a CUDA build and nvcc is found).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdkernels-installed
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh)
ARGS ?=

.PHONY: install test test-main test-interpret test-heavy test-heavy-main test-heavy-interpret bench selfcheck clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# pytest with the marker expression $(1), environment $(2).  Exit status 5 means the expression
# selected no test: a broken selection, so it fails the target like any other pytest error.
define pytest
	$(2) $(PY) -m pytest -m "$(1)" -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make $@: pytest -m "$(1)" selected no tests' >&2; fi; \
	exit $$rc
endef

# Two pytest processes: TRITON_INTERPRET is read when @triton.jit runs, so the
# Triton-interpreter tests cannot share a process with the rest.
test: test-main test-interpret

test-main: $(STAMP)
	$(call pytest,not triton_interpret and not heavy)

test-interpret: $(STAMP)
	$(call pytest,triton_interpret and not heavy,TRITON_INTERPRET=1)

# The heavy tests: the GPU check's dry run, multi-process (gloo) runs, ahead-of-time
# kernel compiles, real models, interpreted gradgradchecks.
test-heavy: test-heavy-main test-heavy-interpret

test-heavy-main: $(STAMP)
	$(call pytest,heavy and not triton_interpret)

test-heavy-interpret: $(STAMP)
	$(call pytest,heavy and triton_interpret,TRITON_INTERPRET=1)

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

selfcheck: $(STAMP)
	$(PY) -m sdkernels

clean:
	rm -rf build $(VENV) sdkernels/*.so *.egg-info
