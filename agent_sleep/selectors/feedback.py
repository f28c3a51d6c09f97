"""``feedback``: keep what people (or evaluators) said was good, drop what they said was bad.

An episode's verdict comes from its mean score (good: ``>= min_score``) and from its labels (the
newest feedback with a label in ``good_labels`` or ``bad_labels``). When the two disagree, the newest
feedback that carries either decides, and the reason says so. An episode with a correction is kept
whatever its scores say: a wrong answer with the right one beside it is what ``corrections`` trains
on. Episodes nobody rated are kept unless ``keep_unrated`` is false. A bad episode whose feedback carries
an instruction is handed on for the instruction only (see :class:`~agent_sleep.selectors.base.EpisodeFilter`):
its conversation is not trained on, its instruction still describes how the agent should behave.
"""

from __future__ import annotations

from pydantic import Field

from agent_sleep.selectors.base import EpisodeFilter, SelectorParams, Verdict
from agent_sleep.selectors.candidates import EpisodeCandidate, FeedbackItem

__all__ = ["FeedbackParams", "FeedbackSelector"]


class FeedbackParams(SelectorParams):
    min_score: float = Field(default=0.5, allow_inf_nan=False)
    good_labels: tuple[str, ...] = ("thumbs_up", "good", "helpful", "correct")
    bad_labels: tuple[str, ...] = ("thumbs_down", "bad", "unhelpful", "wrong", "incorrect")
    keep_unrated: bool = True


class FeedbackSelector(EpisodeFilter):
    name = "feedback"
    Params = FeedbackParams
    params: FeedbackParams

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        p = self.params
        if episode.corrections:
            return Verdict(True, f"has a correction ({len(episode.corrections)} feedback)")
        mean = episode.mean_score
        by_score: bool | None = None if mean is None else mean >= p.min_score
        score_says = "" if mean is None else f"mean score {mean:.2f} {'>=' if by_score else '<'} {p.min_score:g}"
        labelled = [f for f in episode.feedback if f.label in p.good_labels or f.label in p.bad_labels]
        by_label: bool | None = None
        label_says = ""
        if labelled:
            newest = _newest(labelled)
            by_label = newest.label in p.good_labels
            label_says = f"labelled {newest.label!r}"
            if len({f.label in p.good_labels for f in labelled}) > 1:
                label_says += f" (labels disagree: {sorted({str(f.label) for f in labelled})}; the newest decides)"
        if by_score is None and by_label is None:
            if p.keep_unrated:
                return Verdict(True, "no score or listed label: kept (keep_unrated)")
            return Verdict(False, "no score or listed label (keep_unrated is false)")
        if by_label is None or by_score is None or by_label == by_score:
            good = by_score if by_label is None else by_label
            return Verdict(bool(good), "; ".join(s for s in (score_says, label_says) if s))
        newest = _newest([f for f in episode.feedback if f.score is not None or f in labelled])
        good = by_label if newest in labelled else by_score
        return Verdict(good, f"feedback disagrees ({score_says}; {label_says}); the newest, {newest.id} "
                             f"({newest.created_at:%Y-%m-%d %H:%M:%S}), decides")  # fmt: skip


def _newest(items: list[FeedbackItem]) -> FeedbackItem:
    return max(items, key=lambda f: (f.created_at, f.id))
