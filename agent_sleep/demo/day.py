"""A day in the life of the helpdesk agent: the content, the day itself, and the before/after table.

The content ships in ``agent_sleep/demo/day/``: two new documents of a fictional shop (a product
sheet and a returns policy, with invented names and numbers so the base model cannot know them),
the day's customer questions (each about one *fact*, with the correction a support lead gives
when the agent gets it wrong) and, in ``rephrasings.json``, **held-out rephrasings** of every
fact's question: other wording, same answer. The rephrasings are asked only to measure what
sleep changed; they are never logged, trained on or used as gate probes (:func:`ask` logs
nothing unless given a store, and :func:`run_day` never sees them).

The day (:func:`run_day`): the documents are added to the experience store (the agent does not
read them: its prompt holds no knowledge base), every question goes through the LangGraph
helpdesk agent with capture on, and each answer gets feedback: ``correct`` (score 1) or
``wrong`` (score 0) with the correction text. Scoring is
:func:`~agent_sleep.evaluation.answers.score_answer` (``contains``) against the fact's answers.

Not here: sleeping (selection, generators, the gate, deployment) - this module only produces
the day's experience and measures a model before and after.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_sleep.errors import ConfigError, InvalidInputError
from agent_sleep.evaluation.answers import score_answer
from agent_sleep.store import ExperienceStore

__all__ = [
    "DAY_DIR", "Answer", "DayContent", "DayLog", "Row", "accuracy", "as_json", "ask", "compare",
    "corrected_conversations", "format_answer", "format_table", "held_out", "load_day", "main",
    "replay_conversations", "run_day",
]  # fmt: skip

DAY_DIR = Path(__file__).resolve().parent / "day"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DayDocument(_Frozen):
    id: str
    source: str
    title: str
    file: str
    text: str = ""


class Fact(_Frozen):
    topic: str
    answers: tuple[str, ...] = Field(min_length=1)


class DayQuestion(_Frozen):
    id: str
    fact: str
    question: str = Field(min_length=1)
    correction: str = Field(min_length=1)


class ReplayItem(_Frozen):
    question: str = Field(min_length=1)
    answers: tuple[str, ...] = Field(min_length=1)


class DayContent(_Frozen):
    """Everything the day needs; ``rephrasings`` maps a fact to its held-out questions, ``replay``
    holds ordinary requests handled well before the day (rehearsal material for the night)."""

    agent: str
    company: str
    documents: tuple[DayDocument, ...]
    facts: dict[str, Fact]
    questions: tuple[DayQuestion, ...]
    rephrasings: dict[str, tuple[str, ...]]
    replay: tuple[ReplayItem, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DayContent:
        problems = [f"question {q.id}: unknown fact {q.fact!r}" for q in self.questions if q.fact not in self.facts]
        problems += [f"rephrasings of unknown fact {f!r}" for f in self.rephrasings if f not in self.facts]
        problems += [f"fact {f!r} has no held-out rephrasing" for f in self.facts if not self.rephrasings.get(f)]
        asked = {" ".join(q.question.lower().split()) for q in self.questions}
        for fact, texts in self.rephrasings.items():
            for text in texts:
                if " ".join(text.lower().split()) in asked:
                    problems.append(f"rephrasing {text!r} is one of the day's questions")
                if fact in self.facts and score_answer(text, self.facts[fact].answers):
                    problems.append(f"rephrasing {text!r} gives its answer away")
        ids = [q.id for q in self.questions]
        if len(set(ids)) != len(ids):
            problems.append("question ids repeat")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def fact_of(self, question_id: str) -> str:
        for q in self.questions:
            if q.id == question_id:
                return q.fact
        return question_id  # a rephrasing is asked under its fact's id

    def answers(self, fact: str) -> tuple[str, ...]:
        return self.facts[fact].answers

    def correction(self, question_id: str) -> str:
        return next(q.correction for q in self.questions if q.id == question_id)


def load_day(folder: str | Path = DAY_DIR) -> DayContent:
    """The day's content from ``folder`` (``day.json``, ``rephrasings.json`` and the documents), checked."""
    folder = Path(folder)
    try:
        day = json.loads((folder / "day.json").read_text(encoding="utf-8"))
        rephrasings = json.loads((folder / "rephrasings.json").read_text(encoding="utf-8"))["rephrasings"]
        replay_file = folder / "replay.json"
        if replay_file.exists():
            day["replay"] = json.loads(replay_file.read_text(encoding="utf-8"))["conversations"]
        day["documents"] = [{**d, "text": (folder / d["file"]).read_text(encoding="utf-8")} for d in day["documents"]]
        return DayContent(**day, rephrasings=rephrasings)
    except (OSError, KeyError, ValueError, ValidationError) as exc:
        raise ConfigError(f"the day's content in {folder} is not usable: {exc}") from exc


# ---------------------------------------------------------------- asking


@dataclass(frozen=True)
class Answer:
    """One question as the agent answered it; ``key`` is the question id (day) or the fact (rephrasing)."""

    key: str
    fact: str
    question: str
    reply: str
    correct: bool
    tool_calls: tuple[str, ...] = ()
    episode_id: str | None = None


def ask(model: Any, items: Sequence[tuple[str, str]], content: DayContent, *, store: ExperienceStore | None = None,
        on_answer: Callable[[Answer], Any] | None = None) -> list[Answer]:
    """Put each ``(key, question)`` to the helpdesk agent on ``model``, one conversation each, and score it.

    With ``store`` every conversation is logged as an episode of ``content.agent`` (capture on);
    without it nothing is logged, which is how held-out questions must be asked.
    """
    from langchain_core.messages import AIMessage

    from agent_sleep.capture.callback import SleepCallbackHandler
    from agent_sleep.demo.helpdesk import build_agent

    agent = build_agent(model)
    capture = SleepCallbackHandler(content.agent, url=store.url, settings=store.settings) if store else None
    answers = []
    for key, question in items:
        run_id = uuid.uuid4()
        config: dict[str, Any] = {"run_id": run_id, "configurable": {"thread_id": f"customer-{run_id.hex[:8]}"}}
        if capture is not None:
            config["callbacks"] = [capture]
        messages = agent.invoke({"messages": [("user", question)]}, config=config)["messages"]
        episode = None
        if capture is not None:
            episode = capture.episode_id_for(run_id)
            capture.flush()
        fact = content.fact_of(key)
        reply = str(messages[-1].content).strip()
        answers.append(Answer(
            key=key, fact=fact, question=question, reply=reply,
            correct=bool(score_answer(reply, content.answers(fact))),
            tool_calls=tuple(f"{c['name']}({json.dumps(c['args'])})"
                             for m in messages if isinstance(m, AIMessage) for c in m.tool_calls),
            episode_id=episode,
        ))  # fmt: skip
        if on_answer is not None:
            on_answer(answers[-1])
    return answers


# ---------------------------------------------------------------- the day


@dataclass(frozen=True)
class DayLog:
    """What the day left in the store: document ids, and every answer with its episode."""

    documents: tuple[str, ...]
    answers: tuple[Answer, ...]

    @property
    def failed(self) -> tuple[Answer, ...]:
        return tuple(a for a in self.answers if not a.correct)

    @property
    def failed_facts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.fact for a in self.failed))


def _feedback(store: ExperienceStore, episode: str, *, score: float, label: str, correction: str | None) -> None:
    """Feedback with the correction in ``correction`` where the store has that field (migration 0004's
    ``feedback.correction``), and always in ``comment`` too, so a reader of either finds it."""
    extra: dict[str, Any] = {}
    if correction is not None and "correction" in inspect.signature(store.add_feedback).parameters:
        extra["correction"] = correction
    store.add_feedback(episode, score=score, label=label, comment=correction, source="human", **extra)


def run_day(model: Any, store: ExperienceStore, content: DayContent | None = None, *,
            on_answer: Callable[[Answer], Any] | None = None) -> DayLog:
    """The day: add the documents to ``store``, answer every question (logged), record feedback.

    A wrong answer gets feedback ``wrong`` (score 0) carrying the correction and outcome
    ``corrected``; a right one ``correct`` (score 1) and outcome ``resolved``.
    """
    content = content or load_day()
    docs = [store.add_document(d.source, d.text, title=d.title, agent=content.agent) for d in content.documents]
    answers = ask(model, [(q.id, q.question) for q in content.questions], content, store=store, on_answer=on_answer)
    for answer in answers:
        assert answer.episode_id is not None  # logged: ask was given the store
        if answer.correct:
            _feedback(store, answer.episode_id, score=1.0, label="correct", correction=None)
        else:
            _feedback(store, answer.episode_id, score=0.0, label="wrong", correction=content.correction(answer.key))
        store.record_outcome(answer.episode_id, "resolved" if answer.correct else "corrected")
    return DayLog(documents=tuple(d.id for d in docs), answers=tuple(answers))


def held_out(content: DayContent, facts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The held-out rephrasings (fact, question) of ``facts`` (default: every fact), in content order."""
    wanted = set(content.facts if facts is None else facts)
    return [(fact, text) for fact, texts in content.rephrasings.items() if fact in wanted for text in texts]


def _chat_dicts(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain messages as the chat dicts generators take (tool calls and results kept)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.type == "system":
            out.append({"role": "system", "content": str(m.content)})
        elif m.type == "human":
            out.append({"role": "user", "content": str(m.content)})
        elif m.type == "ai":
            calls = [{"id": c.get("id"), "name": c["name"], "arguments": c["args"]} for c in m.tool_calls]
            out.append({"role": "assistant", "content": str(m.content), **({"tool_calls": calls} if calls else {})})
        elif m.type == "tool":
            out.append({"role": "tool", "content": str(m.content), "tool_call_id": m.tool_call_id, "name": m.name})
    return out


def corrected_conversations(store: ExperienceStore, log: DayLog, content: DayContent) -> list[list[dict[str, Any]]]:
    """Each failed conversation as the model saw it (from the store's record of its last model call),
    with the correction in place of the wrong reply: the ``sft`` material of the night.

    The consolidation run's selectors build the same thing from the store; this is for measuring
    before they exist.
    """
    conversations = []
    for answer in log.failed:
        assert answer.episode_id is not None
        calls = store.model_calls(answer.episode_id)
        if not calls:
            continue
        seen = _chat_dicts(calls[-1].langchain_messages())
        conversations.append([*seen, {"role": "assistant", "content": content.correction(answer.key)}])
    return conversations


def replay_conversations(model: Any, content: DayContent) -> list[list[dict[str, Any]]]:
    """Rehearsal material: each replay request asked of ``model`` as a plain chat (no agent prompt),
    kept with the model's own reply when that reply is right (it "handled it well").

    Training on these beside the corrections (self-distillation on what already worked) is how
    the sft night can limit what it overwrites; see ``evals/bench_demo_content.py`` for what it buys.
    """
    from langchain_core.messages import HumanMessage

    kept = []
    for item in content.replay:
        reply = str(model.invoke([HumanMessage(item.question)]).content).strip()
        if reply and score_answer(reply, item.answers):
            kept.append([{"role": "user", "content": item.question}, {"role": "assistant", "content": reply}])
    return kept


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    fact: str
    question: str
    before: str
    after: str
    correct_before: bool
    correct_after: bool


def compare(before: Sequence[Answer], after: Sequence[Answer]) -> list[Row]:
    """Pair the answers to the same questions (same order) before and after."""
    if [a.question for a in before] != [a.question for a in after]:
        raise InvalidInputError("before and after must answer the same questions in the same order")
    return [Row(b.fact, b.question, b.reply, a.reply, b.correct, a.correct) for b, a in zip(before, after, strict=True)]


def _cell(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def format_table(rows: Sequence[Row], *, width: int = 38) -> str:
    """The before/after table a person reads: question, both answers, whether each is right."""
    mark = {True: "yes", False: "no "}
    head = f"{'question (held out; no documents in context)':<{width}}  {'before':<{width}} ok?  {'after':<{width}} ok?"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{_cell(r.question, width):<{width}}  {_cell(r.before, width):<{width}} {mark[r.correct_before]}  "
                     f"{_cell(r.after, width):<{width}} {mark[r.correct_after]}")
    n = len(rows)
    b, a = sum(r.correct_before for r in rows), sum(r.correct_after for r in rows)
    lines.append("-" * len(head))
    lines.append(f"right before sleep: {b}/{n} ({b / max(n, 1):.0%})   right after: {a}/{n} ({a / max(n, 1):.0%})")
    return "\n".join(lines)


def accuracy(answers: Sequence[Answer]) -> dict[str, Any]:
    """``{"right", "of", "accuracy"}`` of a list of answers (JSON-ready)."""
    right = sum(a.correct for a in answers)
    return {"right": right, "of": len(answers), "accuracy": round(right / len(answers), 4) if answers else None}


def as_json(answers: Sequence[Answer]) -> list[Mapping[str, Any]]:
    """The answers as JSON-ready dicts (for reports and benchmark results)."""
    return [{"key": a.key, "fact": a.fact, "question": a.question, "reply": a.reply, "correct": a.correct,
             "tool_calls": list(a.tool_calls)} for a in answers]  # fmt: skip


# ---------------------------------------------------------------- printing the day


def format_answer(answer: Answer, content: DayContent) -> str:
    """One of the day's conversations as a person reads it: question, tool calls, answer, feedback."""
    lines = [f"customer   {answer.question}"]
    lines += [f"tool call  {call}" for call in answer.tool_calls]
    lines.append(f"agent      {' '.join(answer.reply.split())}")
    if answer.key in {q.id for q in content.questions}:
        lines.append("feedback   correct" if answer.correct
                     else f"feedback   wrong; correction: {content.correction(answer.key)}")
    return "\n".join(lines)


def main(model: Any = None, store: ExperienceStore | None = None, content: DayContent | None = None,
         echo: Callable[[str], Any] = print) -> tuple[DayLog, list[Answer]]:
    """The awake half of the demo, printed: the day, then the held-out rephrasings of what failed,
    asked of the same model and not logged (the table's "before" column).

    Returns the day's log and those answers; after a sleep, ask the same rephrasings of the new
    stack (:func:`ask` with ``held_out(content, log.failed_facts)``) and print
    ``format_table(compare(before, after))``.
    """
    from agent_sleep.runtime.chat_model import ChatLocalModel

    content = content or load_day()
    store = store or ExperienceStore()
    model = model or ChatLocalModel(max_new_tokens=48)
    docs = ", ".join(f"{d.title!r}" for d in content.documents)
    echo(f"A day at the {content.company} helpdesk: a LangGraph agent on "
         f"{getattr(model, 'model', type(model).__name__)}, logging to {store.safe_url}.\n"
         f"This morning {content.company} published {docs}. They go into the experience store; "
         f"the agent has not read them.\n")
    log = run_day(model, store, content, on_answer=lambda a: echo(format_answer(a, content) + "\n"))
    right = sum(a.correct for a in log.answers)
    echo(f"The day: {right} of {len(log.answers)} answers right; {len(log.failed)} corrected by the support "
         f"lead, all logged to {store.safe_url}.")
    probes = held_out(content, log.failed_facts)
    echo(f"\nBefore sleep, {len(probes)} held-out rephrasings of the questions it missed "
         "(never logged, never trained on):")
    before = ask(model, probes, content)
    for answer in before:
        echo(f"  {'right' if answer.correct else 'wrong'}  {answer.question}\n         -> {' '.join(answer.reply.split())}")
    return log, before
