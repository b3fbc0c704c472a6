"""Rollout engines: sample G completions per prompt with the log-probs of the sampled tokens."""

from popo.rollout.base import RolloutEngine, Rollouts, SamplingParams
from popo.rollout.hf import HFEngine

__all__ = ["HFEngine", "RolloutEngine", "Rollouts", "SamplingParams"]
