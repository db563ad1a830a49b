# Quick start (README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv with the pinned torch/triton and the package built in place.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIN := torch==2.13.0 triton==3.7.1
export MAX_JOBS ?= 2

.PHONY: demo op-demo test bench targets venv dist cuda-check clean

# The main job: PDM-SR's demo preset on the embedded photos, then its evaluation table.
demo: venv
	$(PY) -m bsr.train pdm

op-demo: venv
	$(PY) -m bsr.demo --out demo_output

# BSROPS_REQUIRE_EXT=1: a broken native build fails instead of falling back to the references.
test: venv
	BSROPS_REQUIRE_EXT=1 BSR_BENCH_SIZE=smoke $(PY) -m pytest -q tests benchmarks --benchmark-disable

bench: venv
	$(PY) -m pytest benchmarks --benchmark-only

targets: venv
	$(PY) benchmarks/check_targets.py

# The sdist and a wheel built from it (against the venv's torch) in dist/; the test that
# installs such a wheel into a fresh virtualenv is tests/test_package.py.
dist: venv
	rm -rf dist
	$(PY) -c "from setuptools import build_meta; build_meta.build_sdist('dist')"
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist dist/bsrops-*.tar.gz

cuda-check:
	cmake -S . -B build/cmake -G Ninja && cmake --build build/cmake --target cuda_compile_check

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIN) setuptools wheel ninja
# the distribution was called `bsr` before it became `bsrops`: drop that old editable install
	$(PY) -m pip uninstall -q -y bsr 2>/dev/null || true
	$(PY) -m pip install -q --no-build-isolation -e ".[train,test]"
	BSROPS_REQUIRE_EXT=1 $(PY) -c "import bsrops; print('bsrops', bsrops.backend_info('cpu'))"
	touch $@

clean:
	rm -rf build dist $(VENV) bsrops/_C*.so *.egg-info
