# The two commands: `make demo` and `make test`. Both create .venv when it is
# missing, install PyTorch's CPU wheel first (an unpinned torch would pull
# gigabytes of CUDA packages), then the project, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,faces,distributed
STAMP := $(VENV)/.featstore-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all install test demo lint bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) bench/store.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out
