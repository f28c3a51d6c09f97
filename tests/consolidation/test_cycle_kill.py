"""kill -9 at every awkward point of a run, then the next cycle: it takes the run over and finishes it,
with one adapter per skill, at most one deployment for the run, and one recorded outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.faults import ENV, POINTS
from agent_sleep.consolidation.runs import RunStore
from tests.consolidation.conftest import AGENT, World, fast_config
from tests.consolidation.planner import simple_planner

ROOT = Path(__file__).resolve().parents[2]
# Every point on SQLite; the two with the most at stake (registry and deployment writes) on PostgreSQL too.
CASES = [pytest.param(p, "sqlite", id=f"{p}-sqlite") for p in POINTS] + [
    pytest.param(p, "postgresql", id=f"{p}-postgresql") for p in ("generate:after_register", "deploy:after_deploy")]


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Override the backend-parametrised URL: the backend comes with each case here."""
    from tests.conftest import PG_URL, _drop_pg_database, _fresh_pg_database

    backend = request.node.callspec.params["backend"]
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'experience.sqlite'}"
        return
    if not PG_URL:
        pytest.skip("set AGENT_SLEEP_TEST_PG_URL to test PostgreSQL")
    url, name = _fresh_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.mark.parametrize(("point", "backend"), CASES)
def test_a_run_killed_at_any_point_finishes_on_the_next_cycle(point: str, backend: str, world: World, tmp_path: Path,
                                                              tiny_model: Path, db_url: str) -> None:  # fmt: skip
    world.teach("capitals", 6)
    env = {**os.environ, ENV: point, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.consolidation.child_cycle", str(tmp_path), db_url, str(tiny_model)]
    child = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    runs = RunStore(world.store)
    (killed,) = runs.runs(agent=AGENT)
    assert killed.status == "running" and killed.outcome is None

    result = run_cycle(AGENT, config=fast_config(), runtime=world.runtime, planner=simple_planner)
    assert result.run_id == killed.id and result.resumed and result.outcome == "promoted", result.error
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]  # one adapter for the one skill
    assert [d.run_id for d in world.registry.deployments(AGENT)] == [killed.id]  # deployed once
    assert world.registry.live(AGENT).stack.name == result.deployed_stack
    run = runs.get(killed.id)
    assert (run.status, run.outcome) == ("finished", "promoted") and len(runs.runs()) == 1
    assert not list(Path(world.registry.root, "capitals").glob(".*"))  # no staging or orphan debris
    assert not world.store.episodes(agent=AGENT, unconsolidated=True)
    assert (Path(result.folder) / "report.md").is_file()
