"""Loss functions for tether: pure functions, tensors in, (loss, metrics) out.

Shapes: B = batch, T = response length (right-padded), V = vocabulary.
Masks are float or bool (B, T), 1 on real response tokens.
"""

from tether.losses.advantages import (
    MovingAverageBaseline,
    gae,
    group_advantages,
    group_advantages_batch_std,
    leave_one_out_advantages,
    reinforce_advantages,
)
from tether.losses.bradley_terry import (
    bradley_terry_label_smoothed_loss,
    bradley_terry_loss,
    bradley_terry_tie_loss,
    reward_centering_penalty,
)
from tether.losses.dpo import (
    dpo_conservative_loss,
    dpo_hinge_loss,
    dpo_ipo_loss,
    dpo_ipo_token_mean_loss,
    dpo_reference_free_loss,
    dpo_sigmoid_loss,
)
from tether.losses.grpo import constant_mean, grpo_token_loss, sequence_mean, token_mean
from tether.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3
from tether.losses.masked import masked_mean, masked_sum, masked_var, masked_whiten
from tether.losses.ppo import (
    entropy_from_logits,
    explained_variance,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    truncated_importance_weights,
)
from tether.losses.sft import IGNORE_INDEX, sft_loss, sft_loss_sum

__all__ = [
    "truncated_importance_weights",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "IGNORE_INDEX",
    "sft_loss",
    "sft_loss_sum",
    "bradley_terry_loss",
    "bradley_terry_label_smoothed_loss",
    "bradley_terry_tie_loss",
    "reward_centering_penalty",
    "dpo_sigmoid_loss",
    "dpo_ipo_loss",
    "dpo_ipo_token_mean_loss",
    "dpo_hinge_loss",
    "dpo_conservative_loss",
    "dpo_reference_free_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "AdaptiveKLController",
    "FixedKLController",
    "gae",
    "group_advantages",
    "group_advantages_batch_std",
    "leave_one_out_advantages",
    "reinforce_advantages",
    "MovingAverageBaseline",
    "grpo_token_loss",
    "token_mean",
    "sequence_mean",
    "constant_mean",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "entropy_from_logits",
    "explained_variance",
]
