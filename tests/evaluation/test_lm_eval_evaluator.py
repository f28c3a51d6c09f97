"""The lm-eval evaluator on a tiny random model: stacks applied by the runtime's hooks, per-item scores, fail closed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import ConfigError, EvaluationError, NotFoundError
from agent_sleep.evaluation.lm_eval import LmEvalEvaluator, replies
from agent_sleep.evaluation.suites import Suite, SuiteItem
from agent_sleep.interfaces import Evaluator
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir
from tests.helpers_protocols import protocol_mismatches

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is the capital of France?", "What is the weather today?", "hello world", "Who are you?",
             "answer the question", "Tell me about Paris."]  # fmt: skip


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    tmp = tmp_path_factory.mktemp("eval-runtime")
    folder = make_tiny_model_dir(tmp)
    handle = load_base_model(str(folder))
    settings = Settings(data_dir=tmp / "data", database_url=f"sqlite:///{tmp / 'registry.sqlite'}", model=str(folder))
    registry = AdapterRegistry(ExperienceStore(settings=settings))
    # A large delta, so the random tiny model's greedy text visibly changes.
    registry.register(write_random(tmp / "loud", handle, seed=1, std=0.5), "loud")
    rt = LiveRuntime(registry, handle=handle, max_delta_norm=1000.0)
    yield rt
    rt.stop()
    registry.store.close()


def _suite(name: str, answers: list[str] | None = None, match: str = "contains") -> Suite:
    answers = answers or ["Paris"] * len(QUESTIONS)
    return Suite(name=name, max_gen_toks=12, items=[
        SuiteItem(id=f"{name}-{i}", question=q, answer=a, match=match)  # type: ignore[arg-type]
        for i, (q, a) in enumerate(zip(QUESTIONS, answers, strict=True))])  # fmt: skip


def test_the_evaluator_scores_a_stack_through_the_runtime_hooks(runtime: Any, tmp_path: Path) -> None:
    evaluator = LmEvalEvaluator(runtime, [_suite("probe")], tmp_path / "first", batch_size=4)
    assert isinstance(evaluator, Evaluator) and protocol_mismatches(evaluator, Evaluator) == []
    base = evaluator.evaluate([], "probe")
    loud = evaluator.evaluate(["loud@v1"], "probe")
    assert base.stack == () and loud.stack == (("loud@v1", 1.0),)
    assert base.samples == loud.samples == len(QUESTIONS)
    assert list(base.scores) == [f"probe-{i}" for i in range(len(QUESTIONS))]
    base_replies, loud_replies = replies(base), replies(loud)
    assert base_replies != loud_replies  # the adapter reached the model inside lm-eval
    assert runtime.hooks.active is None  # and was unbound afterwards
    assert Path(base.artifact).name == "base.json" and Path(loud.artifact).name == "loud@v1.json"
    saved = json.loads(Path(base.artifact).read_text())  # type: ignore[arg-type]
    assert saved["results"]["probe"]["accuracy,none"] == base.metrics["accuracy"]

    # A suite whose answers are the adapter's own replies: the adapter scores 1.0, the base model less.
    expected = [loud_replies[f"probe-{i}"] for i in range(len(QUESTIONS))]
    assert all(r.strip(" .,!?") for r in expected), expected
    evaluator = LmEvalEvaluator(runtime, [_suite("echo", expected, "exact")], tmp_path / "second", batch_size=4)
    results = {"base": evaluator.evaluate([], "echo"), "loud": evaluator.evaluate([("loud@v1", 1.0)], "echo")}
    assert results["loud"].metrics["accuracy"] == 1.0 and set(results["loud"].scores.values()) == {1.0}
    assert results["base"].metrics["accuracy"] < 1.0
    assert results["base"].metrics["accuracy/qa"] == results["base"].metrics["accuracy"]
    # Scoring the same stack again keeps both result files.
    again = evaluator.evaluate([], "echo")
    assert again.artifact is not None and Path(again.artifact).name == "base-2.json"
    assert again.scores == results["base"].scores


def test_several_suites_in_one_call_and_a_limit_picks_the_same_items(runtime: Any, tmp_path: Path) -> None:
    suites = [_suite("one"), _suite("two")]
    evaluator = LmEvalEvaluator(runtime, suites, tmp_path, batch_size=8, limit=4, seed=7)
    results = evaluator.evaluate_suites(["loud@v1"])
    assert sorted(results) == ["one", "two"] and all(r.samples == 4 for r in results.values())
    assert list(results["one"].scores) == list(suites[0].sample(4, seed=7).ids)
    assert results["one"].artifact == results["two"].artifact
    with pytest.raises(NotFoundError, match=r"unknown suite\(s\) \['three'\]"):
        evaluator.evaluate([], "three")
    with pytest.raises(NotFoundError, match="nope"):
        evaluator.evaluate(["nope@v1"], "one")  # an unknown adapter is the registry's error, not lm-eval's


def test_a_bare_handle_scores_the_base_model_only(runtime: Any, tmp_path: Path) -> None:
    evaluator = LmEvalEvaluator(runtime.handle, [_suite("probe")], tmp_path, batch_size=4)
    assert evaluator.evaluate((), "probe").samples == len(QUESTIONS)
    with pytest.raises(ConfigError, match="base model only"):
        evaluator.evaluate(["loud@v1"], "probe")


def test_missing_task_data_fails_closed(runtime: Any, tmp_path: Path) -> None:
    evaluator = LmEvalEvaluator(runtime, [_suite("probe")], tmp_path, batch_size=4)
    (evaluator.files.tasks / "probe.jsonl").unlink()
    with pytest.raises(EvaluationError, match="lm-eval failed scoring stack 'base' on probe") as info:
        evaluator.evaluate([], "probe")
    assert info.value.__cause__ is not None  # the original error is chained, not swallowed


def test_a_model_that_raises_mid_evaluation_fails_closed(runtime: Any, tmp_path: Path) -> None:
    class Broken(RuntimeError):
        pass

    def explode(module: Any, args: Any, output: Any) -> Any:
        raise Broken("device lost")

    evaluator = LmEvalEvaluator(runtime, [_suite("probe")], tmp_path, batch_size=4)
    hook = runtime.handle.model.model.layers[0].mlp.register_forward_hook(explode)
    try:
        with pytest.raises(EvaluationError, match="loud@v1.*Broken: device lost") as info:
            evaluator.evaluate(["loud@v1"], "probe")
    finally:
        hook.remove()
    assert isinstance(info.value.__cause__, Broken)
    assert runtime.hooks.active is None
    assert not runtime.handle.lock.locked()  # released on the way out


def test_an_item_is_asked_under_its_own_system_prompt(runtime: Any, tmp_path: Path) -> None:
    agent_prompt = "You are the helpdesk of Halvik, a shop for outdoor gear."
    suite = Suite(name="probes", max_gen_toks=4, items=[
        SuiteItem(id="agent", question="When do returns close?", answer="30 days", system=agent_prompt),
        SuiteItem(id="plain", question="What is the capital of France?", answer="Paris")])  # fmt: skip
    result = LmEvalEvaluator(runtime, [suite], tmp_path, batch_size=2).evaluate([], "probes")
    samples = {s["doc"]["id"]: s for s in json.loads(Path(result.artifact).read_text())["samples"]["probes"]}
    prompts = {i: json.dumps(s["arguments"]) for i, s in samples.items()}
    assert agent_prompt in prompts["agent"] and "When do returns close?" in prompts["agent"]
    assert agent_prompt not in prompts["plain"]  # the template's own default, as for every suite without one
    assert samples["plain"]["doc"]["system"] == ""
    # A suite with no system prompt at all is written exactly as before (same rows, same hash).
    plain = Suite(name="plain", items=[suite.items[1]])
    assert not plain.has_system and "system" not in plain.docs()[0]
