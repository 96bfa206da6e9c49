# One command to set up and run the demo, one to set up and run the tests.
# Both create .venv on first use. torch is pinned to the CPU build 2.13.0 here so that a
# CPU machine never pulls a multi-GB CUDA wheel; GPU users install their own torch first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fullsize setup clean study docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 || $(BIN)/python -m pip install --quiet torch
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,slurm]"
	# tests read CLIP's BPE vocabulary from this wheel (never import it); --no-deps: it would pull torchvision
	$(BIN)/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/obliviate demo

# the suite on one worker process per core (at most 4), one torch thread each; a test file stays
# on one worker (its module fixtures, e.g. one Ray cluster, are built once)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n auto --maxprocesses 4 --dist loadfile

# docs/METHODS.md from the settings classes and registries (tests/test_reference.py checks it is current)
docs: $(STAMP)
	$(BIN)/python -m obliviate.reference --out docs/METHODS.md

# random-weight SD 1.5 and SD 2.1 at real size (64 px): one request of each method, export, sampling
# (not part of `make test`: ~5 CPU-minutes, 7.3 GiB peak memory; .ci/run runs it)
test-fullsize: $(STAMP)
	$(BIN)/python -m pytest tests -m fullsize

# The second-edition study behind docs/RESULTS.md (configs/study/): at most about 58 CPU hours at
# the speed measured on an idle 2-core machine (docs/results/study-plan.json) (`python scripts/study.py --plan`; swept values that fall
# under the UA bar stop early, so it is an upper bound), so it is meant
# to be left running over several sessions. scripts/study.py runs the units not yet committed under
# docs/results/study/ in decision order, two at a time on an embedded Ray (one CPU and one torch
# thread each; on a cluster see docs/SCALING.md), resumes an interrupted unit, and copies each
# finished unit's summary there (commit them); results.py then rewrites only the second edition's
# section of docs/RESULTS.md, even after a failed unit.
study: $(STAMP)
	$(BIN)/python scripts/study.py --executor ray --workers 2; status=$$?; $(BIN)/python scripts/results.py; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
