"""Rewards: the verifier interface (``base``: :class:`Verifier`, :class:`FunctionVerifier`) and the math reward
built on math-verify: ``answers`` reads the last ``\\boxed{}`` of a completion and normalises gold answers,
``equivalence`` decides with math-verify whether an answer matches a gold and is the only file a verifier
worker process loads (standard library only, so a worker never imports popo or torch), ``math`` documents
the rule and scores one completion in-process (:func:`math_reward`), ``workers`` starts, stops and drives
the worker processes, and ``pool`` is the batch verifier (:class:`MathVerifier`, :class:`VerifierStats`)."""

from popo.rewards.answers import last_boxed_content
from popo.rewards.base import FunctionVerifier, Verifier
from popo.rewards.math import math_reward
from popo.rewards.pool import MathVerifier, VerifierStats

__all__ = ["FunctionVerifier", "MathVerifier", "Verifier", "VerifierStats", "last_boxed_content", "math_reward"]
