"""`agent-sleep feedback --instruction` end to end: recorded, shown by `episodes show`, refused when blank, and
made the description of the agent's dialog skill by the next run's select stage (`runs explain` says so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_sleep.cli.main import main
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.store import ExperienceStore

INSTRUCTION = "Always ask for the order number first."


def test_an_instruction_goes_from_the_cli_to_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      db_url: str) -> None:  # fmt: skip
    base = ["--data-dir", str(tmp_path / "d"), "--db", db_url]
    store = ExperienceStore(db_url)
    eid = store.start_episode("helpdesk")
    store.append_events(eid, [{"kind": "user_message", "content": "Where is my parcel?"},
                              {"kind": "assistant_message", "content": "It is on its way."}])  # fmt: skip
    store.end_episode(eid)

    assert main([*base, "feedback", eid, "--instruction", "   "]) == 2
    assert "--instruction must not be blank" in capsys.readouterr().err
    assert main([*base, "feedback", eid, "--instruction", INSTRUCTION, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["instruction"] == INSTRUCTION and said["correction"] is None
    fid = said["feedback_id"]
    assert main([*base, "episodes", "show", eid]) == 0
    assert f"    instruction: {INSTRUCTION}" in capsys.readouterr().out
    assert main([*base, "episodes", "show", eid, "--json"]) == 0
    assert [f["instruction"] for f in json.loads(capsys.readouterr().out)["feedback"]] == [INSTRUCTION]

    # The next run's select stage makes it the dialog skill's description (one conversation, no probe: the skill
    # is left out before any model loads, and `runs explain` says why the instruction was not used).
    assert main([*base, "sleep", "--agent", "helpdesk", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outcome"] == "no_signal"
    select = RunStore(store).stages(result["run_id"])["select"].result
    (dialog,) = select["plan"]["skills"]
    assert (dialog["skill"], dialog["description"], dialog["candidates"]) == ("helpdesk-dialog", INSTRUCTION,
                                                                             ["sft", "t2l"])  # fmt: skip
    assert [i["feedback_id"] for i in dialog["instructions"]] == [fid]
    assert main([*base, "runs", "explain", result["run_id"], fid]) == 0
    out = capsys.readouterr().out
    assert f"feedback {fid}: not used" in out and "line 1 of the description of skill helpdesk-dialog" in out
    assert "held-out probe(s); the gate needs at least 2" in out
    store.close()
