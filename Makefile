# Two commands work on a fresh machine: `make demo` and `make test`.
# Set-up is idempotent: it creates .venv, installs the pinned packages and Debian's verilator,
# and is a no-op when all of that is already present.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench verilog lint clean synth synth-setup

setup: $(STAMP) verilator-present

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

verilator-present:
	@command -v verilator >/dev/null 2>&1 || { \
	  echo "verilator not found: installing Debian's package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq verilator; }

demo: setup
	$(VENV)/bin/npu demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(VENV)/bin/npu bench

verilog: setup
	$(PY) -m npu.synth.export -o build/npu.v

# FPGA build from PyPI tools only: make synth BOARD=ulx3s-85f CORES=4 ROWS=8 COLS=8
# (BOARD: ulx3s-85f or icebreaker). Writes synth/reports/<board>_<cores>x<rows>x<cols>.{json,md};
# extra options of `python -m npu.synth.build` go in SYNTH_ARGS (e.g. "--clock-mhz 80").
BOARD ?= ulx3s-85f
CORES ?= 1
ROWS  ?= 8
COLS  ?= 8
SYNTH_STAMP := $(VENV)/.installed-synth

$(SYNTH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,synth]'
	touch $(SYNTH_STAMP)

synth-setup: $(SYNTH_STAMP)

synth: setup synth-setup
	$(PY) -m npu.synth.build --board $(BOARD) --cores $(CORES) --rows $(ROWS) --cols $(COLS) $(SYNTH_ARGS); \
	status=$$?; $(PY) -m npu.synth.table; exit $$status

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf build .pytest_cache
