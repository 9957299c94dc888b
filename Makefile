# The two entry points of the README. Each sets up the environment first (idempotent:
# a no-op when pyproject.toml and requirements/ have not changed).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

RECIPE ?= recipes/tiny/synthetic-gdpo-1n2c.yaml
ARGS ?=

.PHONY: setup train compare test test-quick bench clean

setup:
	@bash scripts/setup_env.sh

## The main job: GDPO on the embedded tiny recipe (CPU, ~15 minutes).
train: setup
	$(VENV)/bin/gdpo train $(RECIPE) $(ARGS)

## GDPO and GRPO on the same seeds, then the comparison plot and final-reward table.
compare: setup
	$(VENV)/bin/gdpo train recipes/tiny/synthetic-gdpo-1n2c.yaml $(ARGS)
	$(VENV)/bin/gdpo train recipes/tiny/synthetic-grpo-1n2c.yaml $(ARGS)
	$(VENV)/bin/gdpo plot runs/tiny-synthetic-gdpo runs/tiny-synthetic-grpo --out runs/compare.png \
		--last 10 --table-out runs/compare.md

## The whole test suite (what CI runs).
test: setup
	$(PY) -m pytest tests $(ARGS)

## Skip the slow tests (vLLM engines, Ray, multi-process Megatron) while iterating.
test-quick: setup
	$(PY) -m pytest tests -m "not slow" $(ARGS)

bench: setup
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache runs
