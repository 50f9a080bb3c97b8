# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelpress-installed
EXAMPLE := examples/phi3-tone
TINY := $(EXAMPLE)/models/tiny-phi3

.PHONY: setup demo test bench clean

# torch is installed first and pinned to the CPU wheel on disk; a bare `pip install torch`
# (or a dependency asking for it) would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[qlora,test]"
	touch $(STAMP)

setup: $(STAMP)

$(TINY)/config.json: $(STAMP)
	$(BIN)/modelpress create-tiny-model --out $(TINY)

demo: setup $(TINY)/config.json
	$(BIN)/modelpress run --config $(EXAMPLE)/demo.json
	$(BIN)/modelpress generate $(EXAMPLE)/runs/demo/model --prompt "I can't believe we won the lottery!"

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/checkpointing.py

clean:
	rm -rf $(EXAMPLE)/runs $(EXAMPLE)/models examples/model-cache
