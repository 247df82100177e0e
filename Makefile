# Two set-up commands, each of which creates and fills .venv itself:
#   make demo   RLHF end to end on SmolLM2-135M-Instruct (SFT -> preferences -> reward model -> PPO -> eval)
#   make test   the test suite (tiny models built in code; no downloads)
# and the manual:
#   make docs   builds docs/ into site/ with MkDocs (warnings are errors)
# and two that build their own:
#   make test-latest   the suite against the newest releases of transformers, peft, accelerate and datasets (.venv-latest)
#   make test-oldest   the model-running tests against the lower bounds in pyproject.toml (.venv-oldest)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test docs test-latest test-oldest bench bench-trl-ppo-env bench-ppo-vs-trl venv clean

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
	$(BIN)/ruff check src tests benchmarks tools docs/hooks.py
	$(BIN)/ruff format --check src tests benchmarks tools docs/hooks.py
	$(BIN)/python -m pytest

# The manual (docs/, mkdocs.yml) as a static site in site/; a warning (a broken link, a page missing from the nav) is an error.
docs: $(STAMP)
	$(BIN)/pip install -q -e ".[docs]"
	$(BIN)/mkdocs build --strict

# The suite against the newest releases of the Hugging Face packages users install next, so that a new release
# that breaks tether shows here before users meet it. Its own virtualenv, .venv-latest, upgraded on every run
# (an upgrade from PyPI); the CPU wheel torch==2.13.0 stays. The versions used are printed first.
# The whole suite runs (as `make test`, minus lint and layers, which no package version changes): the same
# time as `make test` plus the install, well inside CI's time, and every test that loads a model matters here.
LATEST     := .venv-latest
LATEST_HF  := transformers peft accelerate datasets

test-latest:
	[ -x $(LATEST)/bin/python ] || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q torch==2.13.0
	$(LATEST)/bin/pip install -q -e ".[test]"
	$(LATEST)/bin/pip install -q -U $(LATEST_HF) torch==2.13.0
	$(LATEST)/bin/python -c "import importlib.metadata as m; print('test-latest:', ', '.join(f'{p} {m.version(p)}' for p in 'torch $(LATEST_HF)'.split()))"
	$(LATEST)/bin/python -m pytest

# The lower bounds of pyproject.toml, tested: those exact versions (keep OLDEST and pyproject.toml in step),
# on the tests that run models through transformers, peft and accelerate (rollout, sampling and the cache,
# the judge, model loading and sharing, every stage on the tiny models); the rest of the suite does not
# touch them in ways a version changes.
OLDEST     := .venv-oldest
OLDEST_HF  := transformers==4.56.0 peft==0.13.0 accelerate==1.0.0 huggingface_hub==0.34.0 datasets==3.0.0
OLDEST_TESTS := tests/rollout tests/models tests/feedback/test_judge.py tests/stages tests/data

test-oldest:
	[ -x $(OLDEST)/bin/python ] || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q torch==2.13.0
	$(OLDEST)/bin/pip install -q -e ".[test]" $(OLDEST_HF)
	$(OLDEST)/bin/python -m pytest $(OLDEST_TESTS)

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) runs site tests/.tether-home

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
	$(BIN)/python benchmarks/demo_work.py
	$(BIN)/python benchmarks/label_load.py --seconds 60
	$(BIN)/python benchmarks/summary.py

# PPO side by side with TRL 1.10.0 (the last TRL with PPO), on the test suite's tiny model:
# episodes/s and peak RSS. TRL 1.10 lives in its own virtualenv, .venv-trl110 (torch installed
# first from the local CPU wheel); tether is not installed there.
bench-trl-ppo-env:
	bash benchmarks/trl_ppo_env.sh

bench-ppo-vs-trl: $(STAMP) bench-trl-ppo-env
	$(BIN)/python benchmarks/ppo_vs_trl.py
