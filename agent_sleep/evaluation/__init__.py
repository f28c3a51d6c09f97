"""Evaluation: how answers and adapter stacks are scored, and whether a candidate may go live.

``answers`` holds the one answer-matching rule (D2L and gradient-CD benchmarks, meta-training evals,
checkpoint evaluation and the lm-eval suites all use it). ``suites`` writes the items and lm-eval task
files of a run, ``lm_eval`` is the in-process evaluator (adapters applied by the live runtime's hooks)
and ``gate`` the paired comparison against the incumbent. Nothing in this package imports torch or
lm-eval at import time.
"""

from agent_sleep.evaluation.answers import answer_matches, normalize_answer

__all__ = ["answer_matches", "normalize_answer"]
