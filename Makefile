# Two entry points for a fresh machine: `make demo` and `make test` (`make test-fast`: no Ray).
PY        ?= python3.11
VENV      ?= .venv
VPY       := $(VENV)/bin/python
# pip's config on these machines names a find-links folder holding the CPU torch wheel.
WHEELS    ?= $(shell $(PY) -m pip config get global.find-links 2>/dev/null || echo /opt/wheels)
# The CPU build of torch, pinned exactly: a range would pull a multi-GB CUDA build.
TORCH     ?= torch==2.13.0
STAMP     := $(VENV)/.installed

.PHONY: venv test test-fast demo bench gpu-bundle gpu-check chromium clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q uv
	# uv ignores pip.conf, so find-links is passed explicitly; bytecode is compiled because
	# PYTHONDONTWRITEBYTECODE is set on these machines and every import would recompile.
	UV_COMPILE_BYTECODE=1 $(VENV)/bin/uv pip install -q -p $(VPY) --find-links "$(WHEELS)" "$(TORCH)" -e ".[test]" \
	  || $(VPY) -m pip install -q "$(TORCH)" -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# Debian's headless Chromium for the playground's browser test (tests/test_serve_openai.py drives it with
# Playwright at /usr/bin/chromium); as root or through sudo.
chromium:
	test -x /usr/bin/chromium || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium; }

# The 25 slowest tests' times close the output: where the 50-minute budget goes.
test: $(STAMP) chromium
	$(VPY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# No Ray cluster and no full demo: the unit and CLI tests, a couple of minutes on 2 cores.
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not ray and not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/vgt demo --out $(or $(OUT),runs/demo)

bench: $(STAMP)
	$(VENV)/bin/vgt bench

# Check a GPU (README "Check a GPU"). `make gpu-bundle` (here, with PyPI): wheels for GPU_PYTHON on
# manylinux GPU_ARCH in $(GPU_BUNDLE)/ and $(GPU_BUNDLE).tar.gz. `make gpu-check` (on the GPU machine, with its
# own torch in GPU_PY): installs from $(GPU_BUNDLE) without network when the bundle is there, else runs the
# check from this checkout with what GPU_PY has; the report goes to OUT (default runs/gpu-check).
GPU_PYTHON ?= 3.11 3.12 3.13
GPU_ARCH   ?= x86_64
GPU_BUNDLE ?= dist/vgt-gpu-bundle
GPU_PY     ?= python3

gpu-bundle: $(STAMP)
	$(VPY) cluster/gpucheck/build_bundle.py --out $(GPU_BUNDLE) --python $(GPU_PYTHON) --arch $(GPU_ARCH) $(GPU_BUNDLE_FLAGS)

gpu-check:
	if [ -f $(GPU_BUNDLE)/run.sh ]; then sh $(GPU_BUNDLE)/run.sh --python $(GPU_PY) -- --out $(or $(OUT),runs/gpu-check); \
	else PYTHONPATH=$(CURDIR) $(GPU_PY) -m vgt.gpucheck --out $(or $(OUT),runs/gpu-check); fi

clean:
	rm -rf $(VENV) .pytest_cache
