"""Run by tests/test_distributed.py under `torch.distributed.run` (2 processes): every stage named on the
command line, each a list of key=value overrides as JSON: `python distributed_worker.py '{"reward": [...], ...}'`.
A name is the stage's, or the stage's with a suffix ("dpo_fsdp"); one with "interrupted" in it must stop early
(interrupt_after) and is then resumed under the next name."""

import json
import sys

from tether.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, load_config
from tether.stages.dpo import run_dpo
from tether.stages.grpo import train_grpo
from tether.stages.ppo import train_ppo
from tether.stages.reward import train_reward

STAGES = {
    "reward": (RewardConfig, train_reward),
    "dpo": (DPOConfig, run_dpo),
    "ppo": (PPOConfig, train_ppo),
    "grpo": (GRPOConfig, train_grpo),
}

for name, overrides in json.loads(sys.argv[1]).items():
    cls, train = STAGES[name.split("_")[0]]
    result = train(load_config(cls, None, overrides))
    if "interrupted" in name:
        assert result is None, f"{name}: interrupt_after did not stop the run"
