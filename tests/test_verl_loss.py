"""The verl policy loss "popo" (popo.integrations.verl.loss) is refused wherever verl itself computes it: POPO
trains in its own engine, and verl's stock engine would train its NLL alone under POPO's name."""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="verl runs in its own environment: the second part of `make test` (.verl/)")

import torch  # noqa: E402

from popo.errors import ConfigError  # noqa: E402
from popo.integrations.verl.loss import ENGINE_SETTING, popo_policy_loss  # noqa: E402


def test_the_loss_itself_refuses_with_the_engine_setting():
    logp, mask = -torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ConfigError) as err:
        popo_policy_loss(old_log_prob=logp, log_prob=logp, advantages=torch.ones(2, 3), response_mask=mask,
                         loss_agg_mode="token-mean", config=None)
    assert ENGINE_SETTING in str(err.value) and "similarity" in str(err.value) and "\n" not in str(err.value)


def test_verls_own_engine_loss_with_loss_mode_popo_is_refused():
    """verl's engine-level `ppo_loss` (what its stock FSDP engine calls per micro-batch) with loss_mode=popo
    raises instead of training."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    from popo.integrations.verl.plugin import register

    register()
    rows, prompt, response = 2, 2, 3
    data = TensorDict({
        "prompts": torch.ones(rows, prompt, dtype=torch.long),
        "responses": torch.ones(rows, response, dtype=torch.long),
        "attention_mask": torch.ones(rows, prompt + response, dtype=torch.long),
        "response_mask": torch.ones(rows, response, dtype=torch.long),
        "old_log_probs": torch.zeros(rows, response),
        "advantages": torch.tensor([[0.5] * response, [0.0] * response]),
    }, batch_size=[rows])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=rows * response, global_batch_size=rows)
    config = FSDPActorConfig(rollout_n=2, ppo_mini_batch_size=rows, ppo_micro_batch_size_per_gpu=rows,
                             entropy_coeff=0.01, loss_agg_mode="token-mean", policy_loss={"loss_mode": "popo"})
    flat = -torch.rand(rows * (prompt + response), requires_grad=True)
    with pytest.raises(ConfigError, match="fsdp_config._target_=popo.integrations.verl.engine.POPOEngineConfig"):
        ppo_loss(config, {"log_probs": flat, "entropy": torch.rand_like(flat)}, data)
