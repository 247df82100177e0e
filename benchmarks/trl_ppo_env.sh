#!/usr/bin/env bash
# A separate virtualenv, .venv-trl110/, with TRL 1.10.0: the last TRL release that ships PPO
# (trl.experimental.ppo; later releases dropped it). benchmarks/trl_ppo.py runs in it; tether is
# not installed there, and the main .venv keeps its own TRL.
#
# Order matters: torch==2.13.0 goes in FIRST, from the local CPU wheel that pip's find-links
# provides, so that TRL's and transformers' `torch` requirements are already met. Installing
# anything else first would let pip pick a CUDA build (gigabytes). The rest is pinned to the
# versions in tether's main .venv, so that both sides run the same transformers/accelerate
# (trl 1.10.0 asks only for transformers>=4.56.2, accelerate>=1.4.0, datasets>=4.7.0).
# A dry run checks that the pins would not replace torch before anything is installed.
#
# Idempotent: a stamp file records a finished install; a second run does nothing.
#
#     bash benchmarks/trl_ppo_env.sh            # or: make bench-trl-ppo-env
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRL_VENV:-$ROOT/.venv-trl110}"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
PINS=(trl==1.10.0 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0 tokenizers==0.23.3 safetensors==0.8.0 peft==0.21.2)
STAMP="$VENV/.installed-trl110"

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import trl, torch, peft; assert trl.__version__ == '1.10.0'" 2>/dev/null; then
    echo "trl_ppo_env: $VENV already has trl 1.10.0 ($(cat "$STAMP"))"
    exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" --disable-pip-version-check -q)

# 1. torch first, the CPU wheel (a plain `torch==2.13.0` resolves to the local +cpu wheel here).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
    "${PIP[@]}" install "$TORCH"
fi

# 2. Dry run: refuse to go on if resolving TRL and the pins would touch torch.
plan="$("$VENV/bin/pip" --disable-pip-version-check install --dry-run "${PINS[@]}" 2>&1)" || { echo "$plan"; exit 1; }
if grep -E "^Would install" <<<"$plan" | grep -qiE "(^| )(torch|nvidia|triton)[-_]"; then
    echo "trl_ppo_env: installing ${PINS[*]} would replace torch or pull CUDA packages; stopping." >&2
    grep -E "^Would install" <<<"$plan" >&2
    exit 1
fi

# 3. TRL and the rest.
"${PIP[@]}" install "${PINS[@]}"
"$VENV/bin/python" -c "import torch, trl, transformers; from trl.experimental.ppo import PPOConfig, PPOTrainer; print(f'torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')" | tee "$STAMP"
