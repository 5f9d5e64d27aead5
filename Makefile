# Two entry points: `make run` (the default rib-mini grid) and `make test`. Both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)

.PHONY: install run test dvc clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## the default grid through Snakemake, all cores
	$(BIN)/snakemake --cores all

dvc: install  ## the same grid through DVC (dvc.yaml regenerated from params.yaml first), rib in forks of one server
	$(BIN)/python -m rib dvc
	$(BIN)/python -m rib serve -- $(BIN)/dvc repro

test: install  ## the whole test suite (unit tests and end-to-end Snakemake/DVC runs), its files on 2 workers
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:  ## remove pipeline outputs (not the virtual environment)
	rm -rf data models checkpoints results reports logs .snakemake
