# On a fresh machine:  make test   (set-up + the test suite, heavy tests aside: under 15 minutes on 2 cores)
#                      make bench  (set-up + the benchmark on whatever device is here)
#                      make test-heavy  (the tests marked heavy in tests/conftest.py; CI runs it after make test)
#                      make test-wheel / test-wheel-pure  (build a wheel, install it into a fresh venv, smoke-test it)
# Both create a virtual environment in $(VENV), install requirements.txt and
# build the extension once (C++ CPU kernels always; CUDA kernels when torch is
# a CUDA build and nvcc is found).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdkernels-installed
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh)
ARGS ?=

.PHONY: install test test-main test-interpret test-heavy test-heavy-main test-heavy-interpret bench selfcheck clean \
        wheel wheel-pure test-wheel test-wheel-pure docs

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

# Wheels into $(DIST): `make wheel` compiles against $(VENV)'s torch (reusing the objects of `make install`;
# one abi3 wheel per torch; TORCH_CUDA_ARCH_LIST and MAX_JOBS as for the source install), `make wheel-pure`
# the pure-Python one (no compiler).  `make test-wheel` / `test-wheel-pure` install the wheel into a fresh
# venv, $(WHEEL_VENV), that sees $(VENV)'s torch and nothing else of it, and run the selfcheck and a smoke test.
DIST ?= dist
WHEEL_VENV ?= build/venv-wheel
SITE = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SMOKE = import sys, torch, sdkernels; from sdkernels import _ext, reference; \
	assert sdkernels.__file__.startswith(sys.prefix), sdkernels.__file__; \
	assert _ext.HAS_EXT == $(1), _ext.status(); \
	r = torch.randn(8, 5, 16); b = torch.randn(8, 5, 16, requires_grad=True); \
	out = sdkernels.drop_path_add(r, b, 0.3, generator=torch.Generator().manual_seed(1)); \
	exp = reference.drop_path_add(r, b, 0.3, generator=torch.Generator().manual_seed(1)); \
	torch.testing.assert_close(out, exp); out.sum().backward(); \
	m = sdkernels.convert(torch.nn.Sequential(sdkernels.nn.DropPath(0.2))); \
	print("smoke ok:", sdkernels.__version__, sdkernels.available_backends(), _ext.status())

wheel: $(STAMP)
	rm -f $(DIST)/sdkernels-*-cp3*.whl
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip wheel --no-build-isolation --no-deps -w $(DIST) .

wheel-pure: $(STAMP)
	rm -f $(DIST)/sdkernels-*-py3-none-any.whl
	SDKERNELS_BUILD_EXT=0 $(PY) -m pip wheel --no-build-isolation --no-deps -w $(DIST) .

# $(1): the wheel's glob, $(2): whether it holds the extension.
define test_wheel
	rm -rf $(WHEEL_VENV)
	start=$$(date +%s); \
	$(PY) -m venv $(WHEEL_VENV) && \
	echo "$(SITE)" > $$($(WHEEL_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch-from-venv.pth && \
	$(WHEEL_VENV)/bin/python -m pip install --quiet --no-deps $(DIST)/$(1) && \
	echo "wheel installed into a fresh venv in $$(( $$(date +%s) - start )) s"
	cd /tmp && $(CURDIR)/$(WHEEL_VENV)/bin/python -m sdkernels
	cd /tmp && $(CURDIR)/$(WHEEL_VENV)/bin/python -c '$(call SMOKE,$(2))'
endef

test-wheel: wheel
	$(call test_wheel,sdkernels-*-cp3*.whl,True)

test-wheel-pure: wheel-pure
	$(call test_wheel,sdkernels-*-py3-none-any.whl,False)

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or API reference.
docs: $(STAMP)
	$(PY) -m pip install --quiet mkdocs-material 'mkdocstrings[python]'
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf build $(VENV) $(DIST) sdkernels/*.so *.egg-info
