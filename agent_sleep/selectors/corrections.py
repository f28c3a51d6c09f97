"""``corrections``: a failure with a correction becomes the conversation it should have been.

The agent answered wrong and a person (or a later turn, recorded as feedback) gave the right answer:
the episode's final answer (its last assistant message with text) is replaced by the correction, and
what followed the wrong answer is cut, since it reacted to it. With no text answer at all (only tool
calls), the correction is appended as the final answer. Several different corrections on one episode
contradict each other: the newest wins and the reason names the others. Episodes without a
correction are handed on as they are; nothing is ever dropped here.
"""

from __future__ import annotations

from agent_sleep.selectors.base import EpisodeFilter, SelectorParams, Verdict
from agent_sleep.selectors.candidates import EpisodeCandidate

__all__ = ["CorrectionsParams", "CorrectionsSelector", "corrected"]


class CorrectionsParams(SelectorParams):
    pass


class CorrectionsSelector(EpisodeFilter):
    name = "corrections"
    Params = CorrectionsParams

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        if not episode.corrections or episode.corrected_by is not None:
            return Verdict(True, "no correction")
        fixed, reason = corrected(episode)
        return Verdict(True, reason, fixed)


def corrected(episode: EpisodeCandidate) -> tuple[EpisodeCandidate, str]:
    """``episode`` with its final answer replaced by its newest correction, and a sentence saying how."""
    ordered = sorted(episode.corrections, key=lambda f: (f.created_at, f.id))
    newest = ordered[-1]
    text = str(newest.correction).strip()
    index = episode.final_answer()
    messages = list(episode.messages)
    if index is None:
        messages.append({"role": "assistant", "content": text})
        reason = f"no text answer: the correction of feedback {newest.id} appended as the final answer"
    else:
        cut = len(messages) - index - 1
        messages[index:] = [{"role": "assistant", "content": text}]
        reason = f"final answer replaced by the correction of feedback {newest.id}"
        if cut:
            reason += f" ({cut} later message(s) cut)"
    others = [f for f in ordered[:-1] if str(f.correction).strip() != text]
    if others:
        reason += (f"; {len({str(f.correction).strip() for f in others}) + 1} different corrections contradict each "
                   f"other: took the newest ({newest.created_at:%Y-%m-%d %H:%M:%S}), not "
                   f"{', '.join(f.id for f in others)}")
    return episode.replace(messages=tuple(messages), corrected_by=newest.id), reason
