"""Rewards: the verifier interface (``base``: :class:`Verifier`, with the defaults of its optional methods in
:class:`VerifierBase`, and :class:`FunctionVerifier`), the math reward built on math-verify, user reward
functions and their weighted sum, and the reward a configuration describes.

Math: ``answers`` reads the boxes of a completion and normalises gold answers, ``equivalence`` decides with
math-verify whether an answer matches a gold, ``math`` documents the rule and scores one completion
in-process (:func:`math_reward`), and ``math_verifier`` is the batch verifier (:class:`MathVerifier`,
:class:`VerifierStats`). User functions: ``functions`` runs ``package.module:function`` rewards (TRL's
signature) in worker processes (:class:`FunctionPool`) and ``composite`` adds the parts of a run's reward
up (:class:`CompositeReward`). Workers: ``workers`` starts, stops and drives them; each is ``sandbox``
(standard library only, so a worker never imports popo or torch) running the handler of a job file,
``equivalence`` or ``function_worker``. A run's reward: ``make`` builds it from ``reward.*``
(``make_verifier``) and ``scoring`` turns rollouts into reward tensors (``score_rollouts``)."""

from popo.rewards.answers import last_boxed_content
from popo.rewards.base import FunctionVerifier, Verifier, VerifierBase
from popo.rewards.math import math_reward
from popo.rewards.math_verifier import MathVerifier, VerifierStats

__all__ = ["FunctionVerifier", "MathVerifier", "Verifier", "VerifierBase", "VerifierStats", "last_boxed_content",
           "math_reward"]
