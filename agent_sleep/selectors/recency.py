"""``recency``: only episodes from the last ``days`` + ``hours`` before the run's ``now``.

``now`` comes from the run (:class:`~agent_sleep.selectors.base.SelectorContext`), so a rerun of the
same run selects the same episodes. Episodes stamped after ``now`` (clock skew) are kept. Documents
are handed on: a new document is a signal however old it is.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from agent_sleep.selectors.base import EpisodeFilter, SelectorParams, Verdict
from agent_sleep.selectors.candidates import EpisodeCandidate

__all__ = ["RecencyParams", "RecencySelector"]


class RecencyParams(SelectorParams):
    days: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    hours: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_window(self) -> RecencyParams:
        if self.days == 0 and self.hours == 0:
            raise ValueError("the window is empty: give days and/or hours above 0")
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.days, hours=self.hours)


class RecencySelector(EpisodeFilter):
    name = "recency"
    Params = RecencyParams
    params: RecencyParams

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        age = self.context.now - episode.started_at
        window = self.params.window
        if age <= window:
            return Verdict(True, f"started {_span(age)} ago, within {_span(window)}")
        return Verdict(False, f"started {_span(age)} ago, outside the window of {_span(window)}")


def _span(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"
