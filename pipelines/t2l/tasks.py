"""The synthetic multi-task suite for T2L meta-training: ~200 checkable behaviours, their splits, and examples.

A :class:`Task` is one family with one parameter ("prefix 'Verdict:'"), or a composition of two (an inner family
applied to the answer first, then an outer one: "upper+wrap": ``[PARIS]``). Its description is a paraphrase
template of the outer family (joined with one of the inner family's for compositions), normalised the way the
generator normalises descriptions. Splits (:func:`build_suite`, all seeded):

* ``train``: everything not held out; examples use the first 12 templates of each family and training inputs.
* ``unseen_task``: ~15% of the parameters of every group with 4 or more, and every "upper+json" composition
  (both parts seen in training, never together): unseen behaviours composed of seen parts.
* ``unseen_family``: the ``tag`` (``<verdict>Paris</verdict>``) and ``join`` (``the-red-fox``) families: a new
  format around seen keywords and separators (and a new separator, underscores).

Evaluation examples always use held-out templates and held-out inputs, so "seen" tasks are measured on unseen
paraphrases of them. A training example is a pure function of (seed, step, slot): a resumed run sees the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from agent_sleep.generators.t2l import normalize_description
from pipelines.t2l.families import FAMILIES, Family
from pipelines.t2l.inputs import Item, phrase_items, qa_items, split_inputs

__all__ = ["SYSTEM_PROMPTS", "Example", "Suite", "Task", "build_suite", "shuffle_shift"]

HELD_FAMILIES = ("tag", "join")
HELD_COMPOSITIONS = ("upper+json",)
# (inner, outer) compositions; "wrap+prefix" samples 24 of its 96 parameter pairs.
COMPOSITIONS = [("upper", o) for o in ("prefix", "wrap", "bullet", "exclaim", "signoff", "kv", "json")] + [
    ("wrap", "prefix")]  # fmt: skip
# A training example's system prompt: None = the chat template's default (what ``agent-sleep ask`` sends).
SYSTEM_PROMPTS: tuple[str | None, ...] = (None, None, None, "You are a helpful assistant.",
                                          "You are a concise assistant.", "You are an AI agent that helps users.")


@dataclass(frozen=True)
class Task:
    """One behaviour: ``parts`` = ((family, parameter), ...), inner first."""

    parts: tuple[tuple[Family, str], ...]

    @property
    def id(self) -> str:
        return "+".join(f"{f.name}:{p}" if p else f.name for f, p in self.parts)

    @property
    def group(self) -> str:
        return "+".join(f.name for f, _ in self.parts)

    @property
    def kind(self) -> str:
        return self.parts[0][0].kind

    def accepts(self, item: Item) -> bool:
        return item.kind == self.kind and all(f.accepts(item) for f, _ in self.parts)

    def target(self, item: Item) -> str:
        out = item.answer
        for family, param in self.parts:
            out = family.render(out, param)
        return out

    def complies(self, reply: str, item: Item) -> bool:
        """Whether ``reply`` follows the behaviour (format only for "qa" tasks; folded exact match for procedures)."""
        text: str | None = reply.strip()
        if self.kind == "text":
            return text is not None and " ".join(text.lower().split()) == " ".join(self.target(item).lower().split())
        for family, param in reversed(self.parts):
            if text is None:
                return False
            text = family.extract(text, param)
        return text is not None

    def description(self, index: int) -> str:
        """Paraphrase ``index`` (0-15; 12-15 are held out), normalised as the generator normalises descriptions."""
        outer, p_out = self.parts[-1]
        text = outer.describe(index, p_out)
        if len(self.parts) == 2:
            inner, p_in = self.parts[0]
            j = (index * 5) % len(inner.train_templates) if index in outer.train_templates else \
                inner.held_templates[(index + 1) % len(inner.held_templates)]
            text = f"{text} {inner.describe(j, p_in)}"
        return normalize_description(text)

    def templates(self, held: bool) -> range:
        outer = self.parts[-1][0]
        return outer.held_templates if held else outer.train_templates


@dataclass(frozen=True)
class Example:
    task: Task
    template: int
    item: Item
    system: str | None = None

    @property
    def description(self) -> str:
        return self.task.description(self.template)

    @property
    def target(self) -> str:
        return self.task.target(self.item)


@dataclass
class Suite:
    """All tasks with their split, and the inputs split into training and held-out ones."""

    tasks: list[Task]
    split: dict[str, str]  # task id -> train | unseen_task | unseen_family
    train_inputs: dict[str, list[Item]]  # kind -> inputs
    heldout_inputs: dict[str, list[Item]]
    seed: int
    groups: dict[str, list[Task]] = field(default_factory=dict)  # training tasks by group

    def __post_init__(self) -> None:
        for task in self.of("train"):
            self.groups.setdefault(task.group, []).append(task)

    def of(self, split: str) -> list[Task]:
        return [t for t in self.tasks if self.split[t.id] == split]

    def train_example(self, step: int, slot: int) -> Example:
        """Training example ``slot`` of ``step``: a group uniformly (single-parameter families as likely as wide
        ones), a task of it, a training template, a training input and a system prompt."""
        rng = random.Random(f"{self.seed}:train:{step}:{slot}")
        group = self.groups[rng.choice(sorted(self.groups))]
        task = rng.choice(group)
        inputs = [i for i in self.train_inputs[task.kind] if task.accepts(i)]
        return Example(task, rng.choice(task.templates(held=False)), rng.choice(inputs), rng.choice(SYSTEM_PROMPTS))

    def train_batch(self, step: int, size: int) -> list[Example]:
        """``size`` examples of distinct tasks where possible (one LoRA per row)."""
        out: list[Example] = []
        seen: set[str] = set()
        slot = 0
        while len(out) < size:
            ex = self.train_example(step, slot)
            slot += 1
            if ex.task.id not in seen or slot > 8 * size:
                seen.add(ex.task.id)
                out.append(ex)
        return out

    def eval_examples(self, split: str, n: int, *, salt: str = "") -> list[Example]:
        """``n`` examples of ``split`` ("seen" = the training tasks; always held-out templates and inputs, default
        system prompt), tasks round-robin."""
        tasks = self.of("train" if split == "seen" else split)
        rng = random.Random(f"{self.seed}:eval:{split}:{salt}")
        order = tasks[:]
        rng.shuffle(order)
        out = []
        for k in range(n):
            task = order[k % len(order)]
            inputs = [i for i in self.heldout_inputs[task.kind] if task.accepts(i)]
            out.append(Example(task, rng.choice(task.templates(held=True)), rng.choice(inputs), None))
        return out


def _all_tasks(seed: int) -> list[Task]:
    tasks = [Task(((f, p),)) for f in FAMILIES.values() for p in f.params]
    for inner_name, outer_name in COMPOSITIONS:
        inner, outer = FAMILIES[inner_name], FAMILIES[outer_name]
        pairs = [(pi, po) for pi in inner.params for po in outer.params]
        if len(pairs) > 24:
            pairs = sorted(random.Random(f"{seed}:pairs:{inner_name}+{outer_name}").sample(pairs, 24))
        tasks += [Task(((inner, pi), (outer, po))) for pi, po in pairs]
    return tasks


def build_suite(seed: int = 0, heldout_share: float = 0.15) -> Suite:
    """The tasks, their splits and the split inputs (see the module doc)."""
    tasks = _all_tasks(seed)
    split: dict[str, str] = {}
    by_group: dict[str, list[Task]] = {}
    for task in tasks:
        if any(f.name in HELD_FAMILIES for f, _ in task.parts):
            split[task.id] = "unseen_family"
        elif task.group in HELD_COMPOSITIONS:
            split[task.id] = "unseen_task"
        else:
            by_group.setdefault(task.group, []).append(task)
    for group, members in sorted(by_group.items()):
        held: set[str] = set()
        if len(members) >= 4:
            k = max(1, round(len(members) * heldout_share))
            held = {t.id for t in random.Random(f"{seed}:held:{group}").sample(members, k)}
        for task in members:
            split[task.id] = "unseen_task" if task.id in held else "train"
    train_qa, held_qa = split_inputs(qa_items(), seed)
    train_tx, held_tx = split_inputs(phrase_items(seed=seed), seed)
    return Suite(tasks, split, {"qa": train_qa, "text": train_tx}, {"qa": held_qa, "text": held_tx}, seed)


def shuffle_shift(examples: list[Example]) -> int:
    """An offset ``k`` such that example ``(i + k) % n`` is always another task than example ``i``: the shuffled-
    description control pairs each example with that example's description (``n // 2`` when it works)."""
    n = len(examples)
    for shift in [n // 2, *range(1, n)]:
        if all(examples[i].task.id != examples[(i + shift) % n].task.id for i in range(n)):
            return shift
    return n // 2
