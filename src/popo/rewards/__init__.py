"""Rewards: the verifier interface and the math verifier built on math-verify."""

from popo.rewards.base import FunctionVerifier, Verifier
from popo.rewards.math import MathVerifier, VerifierStats, last_boxed_content, math_reward

__all__ = ["FunctionVerifier", "MathVerifier", "Verifier", "VerifierStats", "last_boxed_content", "math_reward"]
