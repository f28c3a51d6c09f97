"""Evaluation: how generated answers and adapters are scored.

``answers`` holds the one answer-scoring rule every D2L and gradient-CD benchmark, the meta-training eval and the
checkpoint evaluation use. The lm-eval guard suites and the promotion gate will live here too; nothing in this
package imports torch at import time.
"""

from agent_sleep.evaluation.answers import answer_matches, normalize_answer

__all__ = ["answer_matches", "normalize_answer"]
