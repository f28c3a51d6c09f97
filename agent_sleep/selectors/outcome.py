"""``outcome``: keep episodes that ended the way training material should, by status and outcome label.

Dropped, in this order: an episode with no assistant turn (nothing the agent said to learn from); one
still ``running`` (it may go on); one whose status is not in ``statuses``; one whose outcome is in
``drop_outcomes``, or not in ``keep_outcomes`` when that list is given. An episode with a correction
passes the status and outcome checks (a failed episode with the right answer beside it is a lesson),
but not the first two.
"""

from __future__ import annotations

from typing import Literal

from agent_sleep.selectors.base import EpisodeFilter, SelectorParams, Verdict
from agent_sleep.selectors.candidates import EpisodeCandidate

__all__ = ["OutcomeParams", "OutcomeSelector"]


class OutcomeParams(SelectorParams):
    statuses: tuple[Literal["completed", "error", "interrupted"], ...] = ("completed",)
    keep_outcomes: tuple[str, ...] | None = None  # None: any outcome (or none) is fine
    drop_outcomes: tuple[str, ...] = ("failed", "abandoned")


class OutcomeSelector(EpisodeFilter):
    name = "outcome"
    Params = OutcomeParams
    params: OutcomeParams

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        p = self.params
        if not episode.has_assistant_turn:
            return Verdict(False, "no assistant turn")
        if episode.status == "running":
            return Verdict(False, "still running (the episode has not ended)")
        corrected = bool(episode.corrections)
        problem = None
        if episode.status not in p.statuses:
            problem = f"status {episode.status!r} is not one of {list(p.statuses)}"
        elif episode.outcome is not None and episode.outcome in p.drop_outcomes:
            problem = f"outcome {episode.outcome!r} is in drop_outcomes"
        elif p.keep_outcomes is not None and episode.outcome not in p.keep_outcomes:
            problem = f"outcome {episode.outcome!r} is not one of keep_outcomes {list(p.keep_outcomes)}"
        if problem is None:
            return Verdict(True, f"status {episode.status!r}, outcome {episode.outcome!r}")
        if corrected:
            return Verdict(True, f"{problem}, but it has a correction")
        return Verdict(False, problem)
