# Two set-up commands, each of which creates and fills .venv itself:
#   make demo   RLHF end to end on SmolLM2-135M-Instruct (SFT -> preferences -> reward model -> PPO -> eval)
#   make test   the test suite (tiny models built in code; no downloads)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-trl-ppo-env bench-ppo-vs-trl venv clean

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

# The layers (import-linter's contracts in pyproject.toml), lint and format (ruff), then the suite.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs tests/.tether-home

# Benchmarks (long: real data, the default model, about an hour on 2 CPU cores). TRL is
# installed here only, as the yardstick; tether never imports it. Figures are printed and
# kept in runs/bench/.
bench: $(STAMP) bench-trl-ppo-env
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/reward_hh.py
	$(BIN)/python benchmarks/ppo_memory.py
	$(BIN)/python benchmarks/ppo_frozen_blocks.py
	$(BIN)/python benchmarks/stage_memory.py
	$(BIN)/python benchmarks/ppo_vs_trl.py
	$(BIN)/python benchmarks/ppo_vs_trl.py --model default --steps 3 --threads 0 --runs tether_lora,tether_four,trl,trl_lora
	$(BIN)/python benchmarks/grpo_vs_trl.py
	$(BIN)/python benchmarks/sft_vs_trl.py
	$(BIN)/python benchmarks/dpo_vs_trl.py
	$(BIN)/python benchmarks/rollout_and_flops.py
	$(BIN)/python benchmarks/summary.py

# PPO side by side with TRL 1.10.0 (the last TRL with PPO), on the test suite's tiny model:
# episodes/s and peak RSS. TRL 1.10 lives in its own virtualenv, .venv-trl110 (torch installed
# first from the local CPU wheel); tether is not installed there.
bench-trl-ppo-env:
	bash benchmarks/trl_ppo_env.sh

bench-ppo-vs-trl: $(STAMP) bench-trl-ppo-env
	$(BIN)/python benchmarks/ppo_vs_trl.py
