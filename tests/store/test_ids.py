"""An episode id works in every spelling a user copies it in: store API and CLI, on both databases."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from agent_sleep.cli.main import main
from agent_sleep.cli.store_cmds import EPISODE_STATUSES as CLI_STATUSES
from agent_sleep.errors import NotFoundError
from agent_sleep.store import EpisodeQuery, ExperienceStore, normalize_episode_id
from agent_sleep.store.records import EPISODE_STATUSES


def _spellings(u: uuid.UUID) -> list[str]:
    return [u.hex, u.hex.upper(), str(u), str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}", f"  {u}\n"]


def test_normalize_episode_id() -> None:
    u = uuid.uuid4()
    assert {normalize_episode_id(s) for s in _spellings(u)} == {u.hex}
    assert normalize_episode_id(u) == u.hex
    assert normalize_episode_id("my-episode-7") == "my-episode-7"  # ids chosen by the user stay as given
    assert normalize_episode_id("not-a-uuid-but-36-characters-long!!!") == "not-a-uuid-but-36-characters-long!!!"


def test_store_api_accepts_every_spelling(store: ExperienceStore) -> None:
    u = uuid.uuid4()
    eid = store.start_episode("helpdesk", episode_id=str(u))  # a dashed id is stored as capture writes ids
    assert eid == u.hex
    for i, spelling in enumerate(_spellings(u)):
        assert store.get_episode(spelling).id == u.hex
        store.append_events(spelling, [{"kind": "user_message", "content": f"m{i}"}])
        store.add_feedback(spelling, score=1.0)
        store.record_outcome(spelling, f"outcome-{i}")
        assert len(store.events(spelling)) == i + 1 and len(store.feedback(spelling)) == i + 1
    store.end_episode(str(u).upper(), status="interrupted")
    assert store.get_episode(u.hex).status == "interrupted"
    assert store.mark_consolidated([str(u)], run_id="r1") == 1
    assert [e.id for e in store.episodes(EpisodeQuery(episode_ids=[str(u).upper()]))] == [u.hex]
    assert [e.id for e in store.episodes(episode_ids=str(u))] == [u.hex]
    with pytest.raises(NotFoundError, match=str(uuid.UUID(int=1))):
        store.get_episode(str(uuid.UUID(int=1)))


def test_cli_reads_dashed_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    base = ["--data-dir", str(tmp_path / "d"), "--db", db_url]
    assert main([*base, "init"]) == 0
    store = ExperienceStore(db_url)
    u, other = uuid.uuid4(), uuid.uuid4()
    for episode in (u, other):
        eid = store.start_episode("helpdesk", episode_id=episode.hex)
        store.append_events(eid, [{"kind": "user_message", "content": f"hello from {episode.hex[:6]}"}])
        store.end_episode(eid, status="interrupted" if episode == u else "completed")
    capsys.readouterr()

    assert main([*base, "feedback", str(u), "--score", "1", "--outcome", "resolved"]) == 0
    assert main([*base, "feedback", str(u).upper(), "--label", "thumbs_up"]) == 0
    assert main([*base, "episodes", "show", str(u).upper()]) == 0
    out = capsys.readouterr().out
    assert f"episode {u.hex}" in out and "status=interrupted" in out and "outcome=resolved" in out
    assert out.count("feedback (human)") == 2
    assert main([*base, "episodes", "list", "--status", "interrupted", "--json"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [u.hex]
    assert main([*base, "episodes", "list", "--episode", str(other).upper(), "--json"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [other.hex]

    export = tmp_path / "one.jsonl"
    assert main([*base, "log", "export", "--episode", str(u), "-o", str(export)]) == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [o["episode"]["id"] for o in lines if o["kind"] == "episode"] == [u.hex]
    assert main(["--data-dir", str(tmp_path / "d2"), "log", "import", str(export)]) == 0
    imported = ExperienceStore(f"sqlite:///{tmp_path / 'd2' / 'experience.sqlite'}")
    assert imported.get_episode(str(u)).status == "interrupted"


def test_cli_and_store_agree_on_statuses() -> None:
    assert CLI_STATUSES == EPISODE_STATUSES
