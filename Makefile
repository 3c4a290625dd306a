# ppdet-ghm: every target sets up what it needs (a .venv from a bare Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-torch demo test lint align align-torch bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps paddledet==2.6.0
	# oneDNN 3.6 headers (0.2 MB, no library) for the oneDNN training convolutions; its `onednn`
	# dependency is a second oneDNN library we do not use (ours link against Paddle's)
	$(PY) -m pip install -q --no-deps onednn-devel==2025.0.1
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The PyTorch reference (mmdet 3.3.0 on torch 2.13.0 CPU) beside Paddle, for align/ and bench/.
setup-torch: setup
	$(PY) -m pip install -q -c requirements.lock -r requirements-torch.txt

demo: setup
	$(PY) -m ppdet_ghm demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

align: setup
	$(PY) -m align.run_all

align-torch: setup-torch
	$(PY) -m align.run_all --torch

clean:
	rm -rf $(VENV) demo_output demo_data output
