"""popo: Positive-Only Policy Optimization (POPO) and GRPO for RL with verifiable rewards.

The math is importable on its own for use in other trainers:

    from popo import popo_weights, popo_loss, grpo_advantages, grpo_loss, ema_update_
"""

from popo.algorithms import LOSSES, PRESETS, get_algorithm
from popo.credit import grpo_advantages, popo_weights
from popo.ema import ema_tau, ema_update_
from popo.logprobs import CompletionOutputs, completion_outputs, masked_mean, selected_token_logprobs, token_entropy
from popo.losses import aggregate_tokens, grpo_loss, kl_penalty, popo_loss
from popo.predictor import Predictor

__version__ = "0.1.0"

_LAZY = {"math_reward": "popo.rewards.math", "MathVerifier": "popo.rewards"}


def __getattr__(name: str):
    """`math_reward` and `MathVerifier` load math-verify only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'popo' has no attribute {name!r}")


__all__ = [
    "LOSSES", "PRESETS", "CompletionOutputs", "MathVerifier", "Predictor", "aggregate_tokens",
    "completion_outputs", "ema_tau", "ema_update_", "get_algorithm", "grpo_advantages", "grpo_loss",
    "kl_penalty", "masked_mean", "math_reward", "popo_loss", "popo_weights", "selected_token_logprobs",
    "token_entropy",
]
