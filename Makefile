# Two commands for users: `make demo` and `make test`. Both create .venv on first run.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a GPU machine pass e.g. TORCH_SPEC=torch (your CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint format gpu clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,dev,triton]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/portattn info
	$(BIN)/portattn check
	$(BIN)/portattn bench --seqlens 256,512,1024 --head-dims 64 --mode both

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest -q --ignore=tests/interpreter
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests/interpreter

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
