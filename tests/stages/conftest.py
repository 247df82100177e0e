from pathlib import Path

import pytest

from tether.config import RewardConfig, load_config
from tether.stages.reward import train_reward


@pytest.fixture(scope="session")
def frozen_layer_rm(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A reward model trained from the policy's own weights with its lower block frozen."""
    out = tmp_path_factory.mktemp("rm")
    train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={tiny_data['prefs']}",
                f"output_dir={out}",
                "freeze_layers=1",
                "batch_size=4",
                "epochs=1",
                "precision=fp32",
                "optim.lr=1e-3",
            ],
        )
    )
    return out / "model"
