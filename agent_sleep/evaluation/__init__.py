"""Evaluation: score adapter stacks on question suites with lm-eval, and decide with a paired gate.

``suites`` (items and the lm-eval task files written per run), ``lm_eval`` (the in-process
evaluator, adapters applied by the live runtime's hooks) and ``gate`` (paired bootstrap
comparison against the incumbent). Nothing in this package imports torch or lm-eval at import time.
"""
