"""A cycle with the real selector chain (the default planner) on a tiny random model: corrected failures
become sft training conversations and held-out probes, secrets planted in the episodes reach neither
the adapter's training data nor any file of the run, and ``runs explain`` says why each episode was used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.runs import RunStore
from tests.consolidation.conftest import AGENT, World, fast_config

QUESTIONS = [
    "What is the capital of France?", "Tell me the capital city of France please.",
    "Which city is the French capital?", "France has which capital?", "Name the capital of France.",
    "Do you know what the capital of France is?", "Where is the seat of government of France?",
    "Capital of France, quickly?",
]  # fmt: skip
SECRETS = ("jane.doe@example.com", "sk-live-4f9aQ2Zx7LmN0pR8sT1uV3wY5", "+44 20 7946 0958")


def log_corrected(world: World, n: int, question: str, wrong: str, right: str, extra: str = "") -> str:
    # Fixed ids: which episodes the hash holds out as probes is then fixed too (4 of these 8 at 0.3).
    eid = world.store.start_episode(AGENT, episode_id=f"{n + 1:032x}")
    world.store.append_events(eid, [{"kind": "user_message", "content": question + extra},
                                    {"kind": "assistant_message", "content": wrong}])  # fmt: skip
    world.store.end_episode(eid)
    world.store.add_feedback(eid, score=0.0, correction=right)
    return eid


def test_corrections_train_and_probe_and_secrets_never_leave_the_store(world: World, tmp_path: Path) -> None:
    secret_line = f" My email is {SECRETS[0]}, key {SECRETS[1]}, call {SECRETS[2]}."
    ids = [log_corrected(world, i, q, "hello world.", "Paris.", secret_line if i % 3 == 0 else "")
           for i, q in enumerate(QUESTIONS)]  # fmt: skip
    selection = {"chain": ["outcome", "feedback", "near_dup", "redact", "corrections"],
                 "probes": {"fraction": 0.3}}  # fmt: skip
    result = run_cycle(AGENT, runtime=world.runtime, config=fast_config(selection=selection))

    assert result.status == "finished" and result.error is None
    assert result.outcome in ("promoted", "rejected_by_gate")  # a real gate decides; either is recorded
    (skill,) = result.skills
    assert skill.skill == f"{AGENT}-dialog" and skill.generator == "sft"
    assert skill.probes >= 2 and skill.train_items >= 3  # fixed ids: 4 held out by hash, near_dup may merge one

    runs = RunStore(world.store)
    rows = runs.decisions(result.run_id)
    planned = {r.item_id: r for r in rows if r.selector == "planner"}
    assert set(planned) <= set(ids) and {r.role for r in planned.values()} == {"train", "probe"}
    # Every episode of the plan was used for one role only.
    assert len(planned) == skill.probes + skill.train_items

    # Nothing the run wrote holds a planted secret: stage results (the plan), decisions, reports, lm-eval
    # task data and samples, the adapter folder (manifest with sources) and the registry's records.
    texts: list[str] = [json.dumps([s.result for s in runs.stages(result.run_id).values()]),
                        json.dumps([r.reason for r in rows])]  # fmt: skip
    for folder in (Path(result.folder), Path(world.registry.get(skill.adapter).path)):
        texts += [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()
                  and p.suffix in (".json", ".jsonl", ".md", ".yaml", ".txt")]  # fmt: skip
    texts.append(json.dumps(world.registry.get(skill.adapter).model_dump(mode="json"), default=str))
    assert len(texts) > 5
    for secret in SECRETS:
        assert not any(secret in t for t in texts), secret
    if set(planned) & set(ids[::3]):  # an episode with the planted secrets was used: placeholders in its place
        assert "[EMAIL]" in texts[0] and "[SECRET]" in texts[0] and "[PHONE]" in texts[0]

    # The corrected answer, not the wrong one, is what sft trained on (the plan in the select stage's result).
    plan: Any = runs.stages(result.run_id)["select"].result
    text = json.dumps(plan)
    assert "Paris." in text and "hello world." not in text
