# edgesplit: `make demo` runs both tiers on the shipped model; `make test` runs lint, types and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= models/default
CLOUD_PORT ?= 8001
EDGE_PORT ?= 8000
CUT ?= 2:6

.PHONY: demo test install serve-cloud serve-edge bench-overhead bench-accuracy bench-adaptive bench-links bench-backends bench-batching bench-packed bench-step bench-speculation bench-scaleout loadtest fuzz soak model draft-model perplexity clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgesplit demo --model $(MODEL)

test: $(STAMP)
	command -v chromium >/dev/null || apt-get install -y -q chromium  # the dashboard test drives Debian's chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The same two services docker-compose.yml runs, without Docker (each in its own terminal).
serve-cloud: $(STAMP)
	$(BIN)/edgesplit serve cloud --model $(MODEL) --host 127.0.0.1 --port $(CLOUD_PORT)

serve-edge: $(STAMP)
	$(BIN)/edgesplit serve edge --model $(MODEL) --cloud http://127.0.0.1:$(CLOUD_PORT) --cut $(CUT) --codec int8 --host 127.0.0.1 --port $(EDGE_PORT)

bench-overhead: $(STAMP)
	$(BIN)/python bench/overhead.py

bench-accuracy: $(STAMP)
	$(BIN)/python bench/codec_accuracy.py

bench-adaptive: $(STAMP)
	$(BIN)/python bench/adaptive.py

# ONNX Runtime (fp32 and int8 weights) against torch per block and per shard, prefill and decode (about 3 minutes).
bench-backends: $(STAMP)
	$(BIN)/python bench/backends.py

# One cloud's output tokens/s with 1-64 emulated edges, cloud-only and a mid cut, against batched generate.
bench-batching: $(STAMP)
	$(BIN)/python bench/batching.py

# A batching round packed into one forward against the same round unpacked (about 3 minutes).
bench-packed: $(STAMP)
	$(BIN)/python bench/packed_round.py

# The edge drafts, the cloud verifies: depths 0-8 and auto on the four emulated links (about 10 minutes).
bench-speculation: $(STAMP)
	$(BIN)/python bench/speculation.py

bench-step: $(STAMP)
	$(BIN)/python bench/step_overhead.py

# The cloud on Ray Serve against a direct cloud: routing cost per step, 1 and 2 replicas, a killed replica (about 10 minutes).
bench-scaleout: $(STAMP)
	$(BIN)/python bench/scaleout.py

# Every plan against the planner's choice on four emulated links, two 124M models (about 40 minutes).
bench-links: $(STAMP)
	$(BIN)/python bench/links.py

# 32 streaming clients for 60 s against a split of the shipped model, then the cloud's throughput at 1-32 streams.
loadtest: $(STAMP)
	$(BIN)/edgesplit loadtest --spawn --cut 2:6 --concurrency 32 --duration-s 60 --out loadtest/results/streams32.json
	$(BIN)/edgesplit loadtest --spawn --cut cloud --concurrency 1 4 16 32 --duration-s 20 --same-prompt \
		--reference $(MODEL) --out loadtest/results/cloud-throughput.json

# The OpenAPI fuzz of the test suite with 25x the examples; and 5 minutes of hostile traffic with cloud restarts.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=500 $(BIN)/python -m pytest -q tests/test_fuzz_openapi.py

soak: $(STAMP)
	$(BIN)/python loadtest/soak.py

# Retrain the shipped checkpoint (needs Debian's bible-kjv for the corpus; about 30 minutes on 2 cores).
model: $(STAMP)
	command -v bible >/dev/null || apt-get install -y bible-kjv
	$(BIN)/python scripts/train_default_model.py --out $(MODEL)

# Retrain speculation's draft model (same tokenizer, 2 blocks of 128; about 6 minutes on 2 cores).
draft-model: $(STAMP)
	command -v bible >/dev/null || apt-get install -y bible-kjv
	$(BIN)/python scripts/train_default_model.py --out models/draft --tokenizer $(MODEL) --layers 2 --hidden 128 --heads 4

perplexity: $(STAMP)
	$(BIN)/python scripts/eval_perplexity.py --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
