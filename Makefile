# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelpress-installed
EXAMPLE := examples/phi3-tone
TINY := $(EXAMPLE)/models/tiny-phi3

.PHONY: setup demo search minilm test bench clean

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

# The search examples: six int4/int8 builder candidates on the demo (reuses its adapter), and
# the MiniLM classifier with six ONNX quantizers under a 2-point accuracy goal.
search: demo
	$(BIN)/modelpress run --config $(EXAMPLE)/search.json

minilm: setup
	cd examples/minilm-tone && ../../$(BIN)/modelpress run --config workflow.json

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/checkpointing.py

clean:
	rm -rf $(EXAMPLE)/runs $(EXAMPLE)/models examples/minilm-tone/runs examples/model-cache
