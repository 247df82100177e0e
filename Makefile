# Two set-up commands, each of which creates and fills .venv itself:
#   make demo   RLHF end to end on SmolLM2-135M-Instruct (SFT -> preferences -> reward model -> PPO -> eval)
#   make test   the test suite (tiny models built in code; no downloads)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

# torch first, pinned: the CPU wheel of 2.13.0 is what this project is tested with, and
# installing it before the package means `torch>=2.4` is already met (no CUDA download).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tether demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs tests/.tether-home

# Benchmarks (long: real data, the default model, about an hour on 2 CPU cores). TRL is
# installed here only, as the yardstick; tether never imports it. Figures are printed and
# kept in runs/bench/.
bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/reward_hh.py
