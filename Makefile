# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean report-screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project's own modules compiled to bytecode, as a pip install (not an editable one)
# leaves a package: where PYTHONDONTWRITEBYTECODE is set, as on the machines this project
# is built on, every process of an editable install compiled them again (imports 0.46 s
# instead of 0.61 s for each `audiences` command). Checked against a hash of the source
# at each import, so an edited module is never run from stale bytecode; 0.1 s a run.
COMPILE := $(BIN)/python -m compileall -q -j 0 --invalidation-mode checked-hash \
	audiences policies connectors

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(COMPILE)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(COMPILE)
	$(BIN)/python -m audiences.demo

lint: $(STAMP)
	$(BIN)/ruff check audiences policies connectors tests benchmarks
	$(BIN)/ruff format --check audiences policies connectors tests benchmarks
	$(BIN)/mypy audiences policies connectors
	$(BIN)/lint-imports

test: $(STAMP)
	@$(COMPILE)
	$(BIN)/ruff check audiences policies connectors tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto

# The first screen of a released compliance report, as docs/compliance-workflow.md shows
# it (needs chromium: apt-get install chromium).
report-screenshot: $(STAMP)
	REPORT_SCREENSHOT=docs/images/report-first-screen.png $(BIN)/python -m pytest -q \
		tests/test_report_browser.py -k released

# make bench ARGS="--quick" (or --only build ...): make reads a bare --quick as its own flag
bench: $(STAMP)
	@$(COMPILE)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
