# The two set-up commands of the README. Both work on a fresh clone: they create .venv, install
# jaxsae with its test extra, then run the job.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# The main job on the embedded default (until the LM pipeline lands: the toy ground-truth run).
demo: venv
	$(BIN)/python -m experiments.train_sae --config=configs/toy.py --workdir=runs/demo

# The whole test suite (8 fake CPU devices are set up by tests/conftest.py).
test: venv
	$(BIN)/python -m pytest -q -n 2 tests

bench: venv
	$(BIN)/python -m benchmarks.train_step

clean:
	rm -rf $(VENV) runs
