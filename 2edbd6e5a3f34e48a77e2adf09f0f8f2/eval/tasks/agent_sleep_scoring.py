"""Written by agent_sleep.evaluation.suites: lm-eval calls process_results to score each reply."""

from agent_sleep.evaluation.suites import process_results

__all__ = ["process_results"]
