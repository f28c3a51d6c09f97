"""Question suites and the lm-eval task files one evaluation run writes for them.

A suite is a named list of short items ``{id, question, answer, kind}`` (plus optional ``aliases``
and ``match``), kept as JSONL (the guards ship under ``evals/guards/``). For a run,
:func:`write_tasks` writes each suite as an lm-eval task in the run's folder: the items as JSONL, a
task YAML that reads them with the ``json`` dataset builder (an absolute path; never the Hub), and
a small Python file beside the YAML whose ``process_results`` calls :func:`score_answer`. Loading
is ``TaskManager(include_path=folder, include_defaults=False)``; the ``datasets`` cache goes to a
folder inside the run (:func:`offline_hf`), so nothing lands in ``~/.cache``.

Scoring rules (``match``; :func:`agent_sleep.evaluation.answers.score_answer`), all on the model's whole reply:

* ``contains`` (default): the answer or an alias appears in the reply, ignoring case and runs of
  whitespace, not inside a longer word or number ("4" is not found in "14");
* ``exact``: the reply is the answer or an alias, ignoring case and surrounding punctuation
  ("Banana." for "banana"), for "reply with only ..." instructions;
* ``regex``: the answer (or an alias) is a Python pattern searched in the stripped reply, case
  sensitive unless it says ``(?i)``, for format rules ("three comma-separated items");
* ``keywords``: the reply holds at least half of the item's ``keywords`` (each as ``contains`` finds it),
  for a free-text answer such as a correction; when an item gives none they are the answer's
  :func:`~agent_sleep.evaluation.answers.key_terms` (numbers, codes, names the question does not give away).

Not here: running the model (:mod:`agent_sleep.evaluation.lm_eval`), comparing stacks
(:mod:`agent_sleep.evaluation.gate`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_sleep.errors import ConfigError, InvalidInputError, NotFoundError
from agent_sleep.evaluation.answers import Match, key_terms, score_answer
from agent_sleep.fsutil import atomic_write_text

__all__ = [
    "GUARDS_DIR", "Match", "Suite", "SuiteItem", "TaskFiles", "guard_suites", "load_suite", "load_suites",
    "offline_hf", "process_results", "score_answer", "write_tasks",
]  # fmt: skip

GUARDS_DIR = Path(__file__).resolve().parents[2] / "evals" / "guards"
"""The shipped guard suites (in a source checkout)."""

METRIC = "accuracy"
"""The one metric each task reports: the mean of per-item scores (1.0 right, 0.0 wrong)."""
SCORING_MODULE = "agent_sleep_scoring"
_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


# ---------------------------------------------------------------- items and suites


class SuiteItem(BaseModel):
    """One question with its reference answer; ``kind`` is a free label used for reporting and counts.
    ``system``: the system prompt the question is asked under (None: the chat template's default), e.g.
    the agent's own prompt for a probe taken from its conversations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    kind: str = Field(default="qa", min_length=1)
    aliases: tuple[str, ...] = ()
    match: Match = "contains"
    system: str | None = None
    keywords: tuple[str, ...] = ()
    """The terms ``match="keywords"`` looks for (None given: :func:`~agent_sleep.evaluation.answers.key_terms`)."""

    @field_validator("aliases")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not a.strip() for a in value):
            raise ValueError("aliases must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _keywords(self) -> SuiteItem:
        if self.match == "keywords" and not self.keywords:
            object.__setattr__(self, "keywords", key_terms(self.answer, self.question))
        elif self.match != "keywords" and self.keywords:
            raise ValueError("keywords are only read with match 'keywords'")
        if any(not k.strip() for k in self.keywords):
            raise ValueError("keywords must be non-empty strings")
        return self

    @model_validator(mode="after")
    def _patterns_compile(self) -> SuiteItem:
        if self.match == "regex":
            for pattern in self.references:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"answer pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return self

    @property
    def references(self) -> tuple[str, ...]:
        """What the reply is scored against: the key terms under ``keywords``, else the answer and its aliases."""
        return self.keywords if self.match == "keywords" else (self.answer, *self.aliases)

    def doc(self, *, with_system: bool = False) -> dict[str, Any]:
        """The JSONL row lm-eval reads (``references`` is never empty, so ``datasets`` infers one type).
        ``with_system``: a ``system`` column ("" for none), for a suite where some item has one."""
        row = {"id": self.id, "question": self.question, "answer": self.answer, "references": list(self.references),
               "kind": self.kind, "match": self.match}  # fmt: skip
        if with_system:
            row["system"] = self.system or ""
        return row


class Suite(BaseModel):
    """A named list of items with unique ids; the name is the lm-eval task name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME)
    items: tuple[SuiteItem, ...] = Field(min_length=1)
    max_gen_toks: int = Field(default=32, gt=0, le=1024)
    version: int = Field(default=1, ge=0)

    @field_validator("items")
    @classmethod
    def _unique_ids(cls, items: tuple[SuiteItem, ...]) -> tuple[SuiteItem, ...]:
        counts = Counter(i.id for i in items)
        dupes = sorted(i for i, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"item ids must be unique; repeated: {', '.join(dupes[:5])}")
        return items

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.items)

    @property
    def has_system(self) -> bool:
        """Whether some item is asked under its own system prompt (the task then reads a ``system`` column)."""
        return any(i.system for i in self.items)

    def docs(self) -> list[dict[str, Any]]:
        """The JSONL rows of the suite's task."""
        return [i.doc(with_system=self.has_system) for i in self.items]

    @property
    def content_hash(self) -> str:
        """sha256 of the items as written for lm-eval (changes whenever a question or answer does)."""
        text = "\n".join(json.dumps(d, sort_keys=True) for d in self.docs())
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def kinds(self) -> dict[str, int]:
        """Items per ``kind``."""
        return dict(Counter(i.kind for i in self.items))

    def sample(self, n: int | None, *, seed: int = 0) -> Suite:
        """``n`` items chosen by ``seed`` and the suite name, in file order (None or n >= len: all).

        The same ``(n, seed)`` always picks the same items, so a candidate and the incumbent
        evaluated on ``sample(n)`` are compared on the same questions.
        """
        if n is None or n >= len(self.items):
            return self
        if n < 1:
            raise InvalidInputError(f"sample size must be at least 1, got {n}")
        picked = sorted(random.Random(f"{seed}:{self.name}").sample(range(len(self.items)), n))
        return self.model_copy(update={"items": tuple(self.items[i] for i in picked)})


def load_suite(path: str | Path, *, name: str | None = None, **fields: Any) -> Suite:
    """A suite from a JSONL file of items (name: the file's stem); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"suite file {path} does not exist")
    items: list[SuiteItem] = []
    problems: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(SuiteItem.model_validate_json(line))
        except ValidationError as exc:
            problems.append(f"{path}:{n}: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}"
                                                        for e in exc.errors()))  # fmt: skip
    if problems:
        raise InvalidInputError("bad suite items:\n" + "\n".join(problems))
    try:
        return Suite(name=name or path.stem, items=tuple(items), **fields)
    except ValidationError as exc:
        raise InvalidInputError(f"bad suite {path}: {exc}") from exc


def load_suites(folder: str | Path, *, prefix: str = "") -> list[Suite]:
    """Every ``*.jsonl`` in ``folder`` as a suite named ``prefix + stem``, sorted by name."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise NotFoundError(f"no suite files (*.jsonl) in {folder}")
    return [load_suite(f, name=prefix + f.stem) for f in files]


def guard_suites(*, limit: int | None = None, seed: int = 0, folder: str | Path | None = None) -> list[Suite]:
    """The shipped guard suites (``guards_general``, ``guards_helpdesk``, ``guards_instructions``),
    each cut to ``limit`` seeded items to keep a CPU gate run cheap."""
    folder = Path(folder) if folder is not None else GUARDS_DIR
    return [s.sample(limit, seed=seed) for s in load_suites(folder, prefix="guards_")]


# ---------------------------------------------------------------- scoring


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval's per-document hook (``generate_until``: ``results`` holds the one reply)."""
    return {METRIC: score_answer(results[0], doc["references"], doc["match"])}


# ---------------------------------------------------------------- lm-eval task files


@dataclass(frozen=True)
class TaskFiles:
    """Where one run's task files are: ``tasks`` (YAML, JSONL, scoring module) and ``hf_home``."""

    tasks: Path
    hf_home: Path
    suites: tuple[Suite, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.suites)


_SCORING_SOURCE = '''"""Written by agent_sleep.evaluation.suites: lm-eval calls process_results to score each reply."""

from agent_sleep.evaluation.suites import process_results

__all__ = ["process_results"]
'''


def _task_yaml(suite: Suite, data: Path, cache: Path) -> str:
    q = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    until = q(["\n\n"])  # stop at a blank line (EOS stops too: lm-eval adds it)
    return "\n".join([
        "# Written by agent_sleep.evaluation.suites for one evaluation run.",
        f"task: {q(suite.name)}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {q(str(data))}",
        f"  cache_dir: {q(str(cache))}",
        "test_split: test",
        "output_type: generate_until",
        "num_fewshot: 0",
        "doc_to_text: question",
        # lm-eval reads a doc field named by `description` and sends it as the system message ("" sends none)
        *(["description: system"] if suite.has_system else []),
        "doc_to_target: answer",
        "generation_kwargs:",
        f"  until: {until}",
        f"  max_gen_toks: {suite.max_gen_toks}",
        "  do_sample: false",
        f"process_results: !function {SCORING_MODULE}.process_results",
        "metric_list:",
        f"  - metric: {METRIC}",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        f"  version: {suite.version}",
        f"  suite_hash: {q(suite.content_hash)}",
        "",
    ])  # fmt: skip


def write_tasks(suites: Iterable[Suite], folder: str | Path) -> TaskFiles:
    """Write each suite as an lm-eval task under ``folder/tasks`` (files are replaced atomically)."""
    suites = tuple(suites)
    names = [s.name for s in suites]
    if not suites:
        raise ConfigError("no suites to write")
    if len(set(names)) != len(names):
        raise ConfigError(f"suite names must be unique in one run, got {names}")
    folder = Path(folder).resolve()
    tasks, hf_home = folder / "tasks", folder / "hf_home"
    tasks.mkdir(parents=True, exist_ok=True)
    hf_home.mkdir(parents=True, exist_ok=True)
    atomic_write_text(tasks / f"{SCORING_MODULE}.py", _SCORING_SOURCE)
    for suite in suites:
        data = tasks / f"{suite.name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in suite.docs()))
        atomic_write_text(tasks / f"{suite.name}.yaml", _task_yaml(suite, data, hf_home / "datasets"))
    return TaskFiles(tasks=tasks, hf_home=hf_home, suites=suites)


@contextlib.contextmanager
def offline_hf(hf_home: str | Path) -> Iterator[None]:
    """Point the Hugging Face caches at ``hf_home`` and forbid Hub access for the block, then restore.

    The task YAML also names the datasets cache (``cache_dir``), which holds even when
    ``datasets`` read these variables before the block began.
    """
    hf_home = Path(hf_home)
    values = {"HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets"),
              "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
