"""Run by tests/test_distributed.py under `torch.distributed.run` (2 processes): every stage named on the
command line, each a list of key=value overrides as JSON: `python distributed_worker.py '{"reward": [...], ...}'`.
A stage may appear as "ppo_interrupted" first: the same config, stopped by interrupt_after, then resumed."""

import json
import sys

from tether.config import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, load_config
from tether.stages.dpo import run_dpo
from tether.stages.grpo import train_grpo
from tether.stages.ppo import train_ppo
from tether.stages.reward import train_reward

STAGES = {"reward": (RewardConfig, train_reward), "dpo": (DPOConfig, run_dpo), "ppo": (PPOConfig, train_ppo),
          "grpo": (GRPOConfig, train_grpo)}

for name, overrides in json.loads(sys.argv[1]).items():
    cls, train = STAGES[name.removesuffix("_interrupted")]
    result = train(load_config(cls, None, overrides))
    if name.endswith("_interrupted"):
        assert result is None, f"{name}: interrupt_after did not stop the run"
