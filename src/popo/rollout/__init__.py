"""Rollout engines: sample G completions per prompt with the log-probs of the sampled tokens.

`base.py` holds the `RolloutEngine` protocol (every method the trainer and the evaluation call), the
`Rollouts` batch layout and the micro-batch planner; `sampling.py` the per-row seeded sampler that makes a
rollout independent of its batch and process; `hf.py` the `transformers` engine (the default) and
`vllm.py` the optional vLLM one; `make.py` picks the engine `rollout.engine` names. Nothing here knows
about losses or training."""

from popo.rollout.base import RolloutEngine, Rollouts, SamplingParams
from popo.rollout.hf import HFEngine

__all__ = ["HFEngine", "RolloutEngine", "Rollouts", "SamplingParams"]
