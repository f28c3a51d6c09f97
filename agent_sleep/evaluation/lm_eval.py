"""The lm-eval evaluator: score a stack of adapters on question suites, in process, on the shared model.

:class:`LmEvalEvaluator` writes its suites once as lm-eval tasks into its folder
(:func:`~agent_sleep.evaluation.suites.write_tasks`; a ``limit`` picks the same seeded items for
every stack), then for each stack runs ``lm_eval.simple_evaluate`` with ``HFLM`` over the already
loaded base model: chat template applied, greedy, ``log_samples=True``. It hands back one
:class:`~agent_sleep.interfaces.EvalResult` per suite with a score per item, and keeps lm-eval's
whole output (results, configs, samples; numpy values made plain) as JSON under ``results/``.

How adapters are applied: through the live runtime's forward hooks, the same path serving uses.
``HFLM`` is subclassed so that each batch (``_model_generate``, ``_model_call``) runs inside
``runtime.using(stack)`` and the model's lock, exactly as the chat model binds a stack per decode
step. The stack is bound in whatever thread runs the batch (the hooks read a context variable),
other threads keep their own stacks, and serving in the same process waits one batch at most. No
PEFT copy of the model is made (it would double the memory and could drift from what serves).
HFLM gets its own copy of the tokenizer, which it mutates (padding side) while it batches.

Fail closed: anything raised inside lm-eval, and an output that lacks an item asked for or has
one not asked for, becomes :class:`~agent_sleep.errors.EvaluationError` with the cause chained; a
consolidation run turns it into "not deployed". Unknown suites (NotFoundError) and adapters the
registry cannot resolve raise their own errors before lm-eval starts.

Not here: deciding anything (:mod:`agent_sleep.evaluation.gate`), changing what is live.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.errors import ConfigError, EvaluationError, InvalidInputError, NotFoundError
from agent_sleep.evaluation.suites import METRIC, Suite, offline_hf, write_tasks
from agent_sleep.fsutil import atomic_write_json
from agent_sleep.interfaces import EvalResult, StackRefs
from agent_sleep.models.loader import BaseModelHandle

if TYPE_CHECKING:
    from agent_sleep.adapters.stack import PreparedStack
    from agent_sleep.runtime.live import LiveRuntime

__all__ = ["LmEvalEvaluator", "replies"]

Bind = Callable[["PreparedStack | None"], AbstractContextManager[Any]]


class LmEvalEvaluator:
    """Scores stacks on suites with lm-eval; see the module docstring.

    ``runtime``: a :class:`~agent_sleep.runtime.live.LiveRuntime` (resolves ``skill@vN`` refs through
    its registry and applies them with its hooks), or a bare
    :class:`~agent_sleep.models.loader.BaseModelHandle`, which can score the base model only.
    ``folder`` receives ``tasks/``, ``hf_home/`` and ``results/``. ``limit`` caps each suite at
    that many seeded items (the same for every stack evaluated here).
    """

    def __init__(self, runtime: LiveRuntime | BaseModelHandle, suites: Iterable[Suite], folder: str | Path, *,
                 limit: int | None = None, seed: int = 0, batch_size: int = 8) -> None:  # fmt: skip
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        self._runtime = None if isinstance(runtime, BaseModelHandle) else runtime
        self.handle: BaseModelHandle = runtime if isinstance(runtime, BaseModelHandle) else runtime.handle
        self.folder = Path(folder).resolve()
        self.batch_size = batch_size
        self.files = write_tasks([s.sample(limit, seed=seed) for s in suites], self.folder)
        self.suites: dict[str, Suite] = {s.name: s for s in self.files.suites}

    @property
    def name(self) -> str:
        return "lm-eval"

    # -- the Evaluator protocol ---------------------------------------------------------------
    def evaluate(self, stack: StackRefs, suite: str, /) -> EvalResult:
        """Score ``stack`` (``()``: the base model) on one suite."""
        return self.evaluate_suites(stack, [suite])[suite]

    def evaluate_suites(self, stack: StackRefs, suites: Sequence[str] | None = None) -> dict[str, EvalResult]:
        """Score ``stack`` on several suites (default: all) in one lm-eval call, which batches across them.

        Each result's ``seconds`` is the wall time of that one call. Score the stacks you compare the
        same way (same suites per call, same batch size): the items sharing a batch change the padding,
        which can, rarely, flip a greedy reply.
        """
        names = list(self.suites) if suites is None else list(dict.fromkeys(suites))
        if not names:
            raise InvalidInputError("no suites to evaluate")
        unknown = [n for n in names if n not in self.suites]
        if unknown:
            raise NotFoundError(f"unknown suite(s) {unknown}; this evaluator has {sorted(self.suites)}")
        prepared = self._prepare(stack)
        label = prepared.name if prepared is not None else "base"
        try:
            started = time.perf_counter()
            with offline_hf(self.files.hf_home):
                output = _simple_evaluate(self.handle, prepared, self._bind, names, self.files.tasks, self.batch_size)
            seconds = time.perf_counter() - started
            if not isinstance(output, dict):
                raise EvaluationError(f"lm-eval returned {type(output).__name__}, not its results dict")
            artifact = self._save(label, output)
            return {n: self._result(n, output, prepared, seconds, artifact) for n in names}
        except EvaluationError:
            raise
        except Exception as exc:  # fail closed: whatever lm-eval raised, the stack is not scored
            raise EvaluationError(f"lm-eval failed scoring stack {label!r} on {', '.join(names)}: "
                                  f"{type(exc).__name__}: {exc}") from exc  # fmt: skip

    # -- pieces ---------------------------------------------------------------------------------
    def _prepare(self, stack: StackRefs) -> PreparedStack | None:
        if isinstance(stack, str):
            raise InvalidInputError(f"a stack is a list of adapter refs, not the string {stack!r}; use [{stack!r}]")
        refs = list(stack)
        if not refs:
            return None
        if self._runtime is None:
            raise ConfigError("this evaluator was given a bare model handle, so it can score the base model only; "
                              "pass a LiveRuntime to evaluate adapters")  # fmt: skip
        return self._runtime.prepare_adapters(refs)

    def _bind(self, stack: PreparedStack | None) -> AbstractContextManager[Any]:
        if self._runtime is None:
            return contextlib.nullcontext()
        return self._runtime.using(stack)

    def _save(self, label: str, output: Mapping[str, Any]) -> Path:
        folder = self.folder / "results"
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9@._+-]", "_", label)[:120]
        path, n = folder / f"{stem}.json", 1
        while path.exists():  # the same stack scored again: keep both
            n += 1
            path = folder / f"{stem}-{n}.json"
        atomic_write_json(path, output, sort_keys=False, default=_plain)
        return path

    def _result(self, name: str, output: Mapping[str, Any], prepared: PreparedStack | None, seconds: float,
                artifact: Path) -> EvalResult:  # fmt: skip
        suite = self.suites[name]
        samples = (output.get("samples") or {}).get(name)
        if samples is None:
            raise EvaluationError(f"lm-eval returned no samples for suite {name!r} (see {artifact})")
        scores: dict[str, float] = {}
        kinds = {i.id: i.kind for i in suite.items}
        for sample in samples:
            item = str(sample["doc"]["id"])
            score = float(sample[METRIC])
            if item in scores or item not in kinds or not math.isfinite(score):
                raise EvaluationError(f"suite {name!r}: item {item!r} is repeated, unknown or scored {score} "
                                      f"(see {artifact})")  # fmt: skip
            scores[item] = score
        missing = [i for i in suite.ids if i not in scores]
        if missing:
            raise EvaluationError(f"suite {name!r}: lm-eval scored {len(scores)} of {len(suite.ids)} items; "
                                  f"missing {missing[:5]} (see {artifact})")  # fmt: skip
        mean = sum(scores.values()) / len(scores)
        reported = float(output["results"][name][f"{METRIC},none"])
        if not math.isclose(reported, mean, abs_tol=1e-9):
            raise EvaluationError(f"suite {name!r}: lm-eval reports {METRIC} {reported}, its samples average {mean}")
        metrics = {METRIC: mean}
        for kind in sorted(set(kinds.values())):
            of_kind = [scores[i] for i, k in kinds.items() if k == kind]
            metrics[f"{METRIC}/{kind}"] = sum(of_kind) / len(of_kind)
        return EvalResult(
            suite=name,
            stack=prepared.items if prepared is not None else (),
            metrics=metrics,
            samples=len(scores),
            seconds=seconds,
            scores={i: scores[i] for i in suite.ids},
            artifact=str(artifact),
        )


def replies(result: EvalResult) -> dict[str, str]:
    """Each item's generated reply, by item id, from the lm-eval samples saved with ``result`` (its ``artifact``)."""
    if result.artifact is None:
        raise EvaluationError(f"suite {result.suite!r}: the result keeps no lm-eval output to read replies from")
    output = json.loads(Path(result.artifact).read_text(encoding="utf-8"))
    return {str(s["doc"]["id"]): s["resps"][0][0] for s in output["samples"][result.suite]}


def _plain(value: Any) -> Any:
    """JSON for what lm-eval's output holds besides plain values: numpy scalars/arrays, sets, functions."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


@lru_cache(maxsize=1)
def _stack_lm_class() -> type:
    from lm_eval.models.huggingface import HFLM

    class StackHFLM(HFLM):  # type: ignore[misc]
        """HFLM whose every batch runs on one adapter stack, under the shared model's lock."""

        def __init__(self, handle: BaseModelHandle, stack: PreparedStack | None, bind: Bind, batch_size: int) -> None:
            self._as_handle, self._as_stack, self._as_bind = handle, stack, bind
            # HFLM changes its tokenizer's padding side while batching: never the shared one.
            super().__init__(pretrained=handle.model, tokenizer=copy.deepcopy(handle.tokenizer), batch_size=batch_size)

        def _model_call(self, *args: Any, **kwargs: Any) -> Any:
            with self._as_handle.lock, self._as_bind(self._as_stack):
                return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
            with self._as_handle.lock, self._as_bind(self._as_stack):
                return super()._model_generate(*args, **kwargs)

    return StackHFLM


def _simple_evaluate(handle: BaseModelHandle, stack: PreparedStack | None, bind: Bind, names: list[str],
                     tasks: Path, batch_size: int) -> Any:  # fmt: skip
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = _stack_lm_class()(handle, stack, bind, batch_size)
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=manager, log_samples=True, bootstrap_iters=0, apply_chat_template=True,
        # Greedy decoding needs no seeds; None leaves the process's random states alone.
        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
    )  # fmt: skip

