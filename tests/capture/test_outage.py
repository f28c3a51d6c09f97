"""The database goes away while the agent works: nothing breaks, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from agent_sleep.capture.recorder import ExperienceRecorder
from agent_sleep.capture.writer import BackgroundWriter, CaptureWarning
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore


def _run_episodes(rec: ExperienceRecorder, n: int, events: int = 5) -> list[str]:
    ids = []
    for i in range(n):
        eid = rec.start_episode(thread_id=f"t{i}")
        for j in range(events):
            rec.log(eid, "user_message", f"message {i}-{j}")
        rec.end_episode(eid)
        ids.append(eid)
    return ids


def test_unreachable_postgres_buffers_without_breaking(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = ExperienceRecorder("a", settings=settings)
        _run_episodes(rec, 3)
        assert rec.flush(timeout=1.0) is False  # cannot be written, but the agent was not blocked
    assert rec.writer.database_down
    assert any(issubclass(w.category, CaptureWarning) and "unreachable" in str(w.message) for w in caught)
    rec.writer.close(timeout=2)
    spilled = list(rec.writer.spill_dir.glob("spill-*.jsonl"))
    assert spilled and sum(len(p.read_text().splitlines()) for p in spilled) == 3 * 7


def test_outage_spill_and_recovery_loses_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("not a directory")  # the SQLite file's folder cannot be created: database down
    url = f"sqlite:///{blocker / 'experience.sqlite'}"
    settings = Settings(data_dir=tmp_path / "data", database_url=url)

    def factory() -> ExperienceStore:
        return ExperienceStore(url, settings=settings)

    spill_dir = tmp_path / "spill"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureWarning)
        writer = BackgroundWriter(factory, spill_dir=spill_dir, max_buffer=50, batch_size=20)
        rec = ExperienceRecorder("a", settings=settings, writer=writer)
        first = _run_episodes(rec, 20)  # 20 * 7 = 140 ops > max_buffer: spilled to files
        assert not writer.flush(timeout=1.5)
        assert writer.database_down and writer.spilled > 0

        blocker.unlink()  # the database comes back
        second = _run_episodes(rec, 5)
        assert writer.flush(timeout=20)
        assert not writer.database_down and not list(spill_dir.glob("spill-*.jsonl"))
        writer.close()

    store = factory()
    eps = store.episodes()
    assert {e.id for e in eps} == set(first + second)
    assert all(e.status == "completed" and e.n_events == 5 for e in eps)
    assert store.count_events() == 25 * 5


def test_spill_left_by_a_dead_process_is_replayed(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("x")
    url = f"sqlite:///{blocker / 'experience.sqlite'}"
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    spill_dir = tmp_path / "spill"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureWarning)
        w1 = BackgroundWriter(lambda: ExperienceStore(url, settings=settings), spill_dir=spill_dir)
        ids = _run_episodes(ExperienceRecorder("a", settings=settings, writer=w1), 4)
        w1.close(timeout=1)  # process exits while the database is down: everything goes to disk
    assert list(spill_dir.glob("spill-*.jsonl"))
    blocker.unlink()
    w2 = BackgroundWriter(lambda: ExperienceStore(url, settings=settings), spill_dir=spill_dir)
    assert w2.flush(timeout=20)
    w2.close()
    assert {e.id for e in ExperienceStore(url, settings=settings).episodes()} == set(ids)


def test_rejected_ops_go_to_dead_letter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    settings = Settings(data_dir=tmp_path, database_url=url)
    writer = BackgroundWriter(lambda: ExperienceStore(url, settings=settings), spill_dir=tmp_path / "spill")
    rec = ExperienceRecorder("a", settings=settings, writer=writer)
    good = rec.start_episode()
    rec.log(good, "user_message", "fine")
    with pytest.warns(CaptureWarning, match="rejected"):
        rec.log("no-such-episode", "user_message", "orphan")  # violates the foreign key
        rec.end_episode(good)
        assert writer.flush(10)
    writer.close()
    assert writer.dead_lettered == 1
    dead = (tmp_path / "spill" / "dead-letter.jsonl").read_text()
    assert "orphan" in dead and "no-such-episode" in dead
    assert [e.content for e in ExperienceStore(url, settings=settings).events(good)] == ["fine"]


_KILLED_AGENT = """
import sys, time
from pathlib import Path
from agent_sleep.capture.recorder import ExperienceRecorder
from agent_sleep.config import Settings

data, url, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rec = ExperienceRecorder("a", settings=Settings(data_dir=data, database_url=url))
first = rec.start_episode(thread_id="t")
for i in range(n // 2):
    rec.log(first, "user_message", f"early {i}")
time.sleep(4.0)  # the outage is old news: the writer sleeps in back-off (retries at 3.1 s, 6.3 s)
second = rec.start_episode(thread_id="t")
for i in range(n - n // 2):
    rec.log(second, "user_message", f"late {i}")
print(first, second, flush=True)
time.sleep(600)
"""


def test_kill_9_during_an_outage_loses_nothing_logged_a_second_before(tmp_path: Path) -> None:
    """Events logged while the database is down are on disk within 0.25 s, so kill -9 a second later loses none."""
    blocker = tmp_path / "db"
    blocker.write_text("the database folder cannot be created: database down")
    url = f"sqlite:///{blocker / 'experience.sqlite'}"
    data = tmp_path / "data"
    n = 1000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONWARNINGS": "ignore"}
    agent = subprocess.Popen([sys.executable, "-c", _KILLED_AGENT, str(data), url, str(n)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = agent.stdout.readline()  # type: ignore[union-attr]
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    assert agent.returncode == -signal.SIGKILL
    first, second = line.split()

    blocker.unlink()  # the database is back; the next process replays what the killed one spilled
    settings = Settings(data_dir=data, database_url=url)
    rec = ExperienceRecorder("a", settings=settings)
    assert rec.flush(timeout=30)
    store = ExperienceStore(url, settings=settings)
    early, late = store.events(first), store.events(second)
    assert [e.content for e in early] == [f"early {i}" for i in range(n // 2)]
    assert [e.content for e in late] == [f"late {i}" for i in range(n - n // 2)]
    assert store.count_events() == n  # exactly once
    assert not list(rec.writer.spill_dir.glob("spill-*.jsonl"))
    rec.writer.close()
    store.close()
