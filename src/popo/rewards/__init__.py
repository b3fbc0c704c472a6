"""Rewards: the verifier interface, the math reward built on math-verify, and its worker pool."""

from popo.rewards.base import FunctionVerifier, Verifier
from popo.rewards.math import last_boxed_content, math_reward
from popo.rewards.pool import MathVerifier, VerifierStats

__all__ = ["FunctionVerifier", "MathVerifier", "Verifier", "VerifierStats", "last_boxed_content", "math_reward"]
