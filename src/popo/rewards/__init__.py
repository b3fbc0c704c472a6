"""Rewards: the verifier interface (``base``: :class:`Verifier`, :class:`FunctionVerifier`), the math reward
built on math-verify, user reward functions and their weighted sum.

Math: ``answers`` reads the boxes of a completion and normalises gold answers, ``equivalence`` decides with
math-verify whether an answer matches a gold, ``math`` documents the rule and scores one completion
in-process (:func:`math_reward`), and ``pool`` is the batch verifier (:class:`MathVerifier`,
:class:`VerifierStats`). User functions: ``functions`` runs ``package.module:function`` rewards (TRL's
signature) in worker processes (:class:`FunctionPool`) and ``composite`` adds the parts of a run's reward
up (:class:`CompositeReward`). Workers: ``workers`` starts, stops and drives them; each is ``sandbox``
(standard library only, so a worker never imports popo or torch) running the handler of a job file,
``equivalence`` or ``function_worker``."""

from popo.rewards.answers import last_boxed_content
from popo.rewards.base import FunctionVerifier, Verifier
from popo.rewards.math import math_reward
from popo.rewards.pool import MathVerifier, VerifierStats

__all__ = ["FunctionVerifier", "MathVerifier", "Verifier", "VerifierStats", "last_boxed_content", "math_reward"]
