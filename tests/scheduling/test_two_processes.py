"""Two processes, one PostgreSQL database: ``agent-sleep serve`` answers users while a scheduler process
consolidates. The run the scheduler promotes reaches the running server without a restart (its registry
watch, LISTEN/NOTIFY), and a request that was streaming when the deploy landed finishes, token for token,
on the stack it started with; the next request runs on the new one.

The scheduler process is ``tests.scheduling.child_service`` with the deploying stand-in cycle
(:mod:`tests.scheduling.deploy_cycle`: a real adapter registered, validated and deployed by the cycle's
live runtime), held before its deploy until the test opens a gate, so the deploy lands while the stream
runs. The tiny model is made with peaked weights (``init_std=0.2``): greedy text is then long and differs
from the first token between stacks, so "produced on the old stack" is checked on the text itself, against
the old stack asked again by name afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_sleep.config import Settings
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.conftest import PG_URL, _drop_pg_database, _fresh_pg_database
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir
from tests.scheduling.conftest import AGENT

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not PG_URL, reason="set AGENT_SLEEP_TEST_PG_URL to test PostgreSQL")]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
LONG = 3000  # tokens of the streamed answer: seconds of generation on the tiny model, the deploy lands inside
OLD, NEW = f"{AGENT}:stack@v1#1", f"{AGENT}:stack@v2#2"
ASK = [{"role": "user", "content": "What is the weather today?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()[-4000:]}")
        time.sleep(0.05)
    return got


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ask(base: str, model: str, max_tokens: int) -> dict[str, Any]:
    reply = httpx.post(f"{base}/v1/chat/completions", timeout=120,
                       json={"model": model, "messages": ASK, "max_tokens": max_tokens, "temperature": 0})  # fmt: skip
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_serve_follows_a_scheduler_on_one_database_and_requests_in_flight_keep_their_stack(tmp_path: Path) -> None:
    url, dbname = _fresh_pg_database()
    data, gate = tmp_path / "data", tmp_path / "gate"
    model = make_tiny_model_dir(tmp_path, init_std=0.2, max_positions=LONG + 64)
    store = ExperienceStore(settings=Settings(data_dir=data, database_url=url, model=str(model)))
    procs: list[subprocess.Popen[bytes]] = []
    serve_log, sched_log = tmp_path / "serve.log", tmp_path / "scheduler.log"

    def logs() -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in (serve_log, sched_log) if p.exists())

    try:
        from agent_sleep.models.loader import load_base_model

        registry = AdapterRegistry(store)
        store.end_episode(store.start_episode(AGENT))  # an agent the CLI knows
        v1 = registry.register(write_random(tmp_path / "v1", load_base_model(str(model)), seed=1), "refunds",
                               agent=AGENT)  # fmt: skip
        registry.deploy(AGENT, [v1.name], actor="alice", reason="the first refunds skill")
        # The documented setup: both processes find the database (and the data dir, where adapters live)
        # through the environment.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "AGENT_SLEEP_DATABASE_URL": url,
               "AGENT_SLEEP_DATA_DIR": str(data), "AGENT_SLEEP_MODEL": str(model)}  # fmt: skip
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with serve_log.open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "agent_sleep.cli.main", "serve", "--port", str(port),
                                           "--max-tokens-limit", str(LONG)], cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))  # fmt: skip
        with sched_log.open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "tests.scheduling.child_service", url, str(data),
                                           "--cycle", "deploy", "--model", str(model), "--gate", str(gate)],
                                          cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
        server = procs[0]
        _wait(lambda: _up(base) or server.poll() is not None, 90, "the server to answer", logs)
        assert server.poll() is None, logs()
        assert _ask(base, AGENT, 1)["system_fingerprint"] == OLD

        enqueue = subprocess.run([sys.executable, "-m", "agent_sleep.cli.main", "sleep", "--agent", AGENT, "--enqueue"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert enqueue.returncode == 0, enqueue.stderr
        runs = RunStore(store)
        run = _wait(lambda: next((r for r in runs.runs(agent=AGENT) if r.stage == "evaluate"), None), 60,
                    "the scheduler's run to register its adapter and wait at the gate", logs)  # fmt: skip
        assert [a.name for a in registry.adapters()] == ["refunds@v1", "refunds@v2"]  # a candidate, not live
        assert _ask(base, AGENT, 1)["system_fingerprint"] == OLD

        # A long answer streams; once it has started, the gate opens and the run deploys refunds@v2.
        text, prints, finish = [], set(), None
        switched_after: int | None = None  # chunks received when the server said it switched
        received = 0
        body = {"model": AGENT, "messages": ASK, "max_tokens": LONG, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                prints.add(chunk["system_fingerprint"])
                for choice in chunk["choices"]:
                    text.append(choice["delta"].get("content") or "")
                    finish = choice.get("finish_reason") or finish
                received += 1
                if received == 1:
                    gate.touch()
                if switched_after is None and received % 10 == 0 and f"switched to {NEW}" in serve_log.read_text():
                    switched_after = received
        streamed = "".join(text)
        assert switched_after is not None, f"the stream ended before the server switched\n{logs()[-4000:]}"
        assert received - switched_after >= 100, (received, switched_after)  # the switch landed mid-stream
        assert prints == {OLD} and finish == "length"

        run = _wait(lambda: (r := runs.get(run.id)).status == "finished" and r, 30, "the run to finish", logs)
        assert run.outcome == "promoted" and run.deployed_stack == f"{AGENT}:stack@v2"
        deps = registry.deployments(AGENT)
        assert [(d.seq, d.actor, d.run_id) for d in deps] == [(1, "alice", None), (2, "consolidation", run.id)]

        # The same server, not restarted, now answers on the new stack...
        assert server.poll() is None
        new = _ask(base, AGENT, 40)
        assert new["system_fingerprint"] == NEW
        # ...and the streamed answer is exactly what the old stack says, asked by name, and not the new one's.
        old = _ask(base, f"{AGENT}:stack@v1", LONG)
        assert old["system_fingerprint"] == f"{AGENT}:stack@v1"
        said = old["choices"][0]["message"]["content"]
        apart = next((i for i, (a, b) in enumerate(zip(streamed, said, strict=False)) if a != b), None)
        assert streamed == said, f"the streamed answer left the old stack's text at character {apart} of {len(said)}"
        assert len(streamed) > 1000
        fresh = new["choices"][0]["message"]["content"]
        assert fresh and not streamed.startswith(fresh)
        served = serve_log.read_text()
        assert f"{AGENT}: serving {OLD} (deploy by alice)" in served
        assert f"{AGENT}: switched to {NEW} (deploy by consolidation, run {run.id}) from {OLD}" in served

        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in procs] == [0, 0], logs()[-4000:]
        procs.clear()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        store.close()
        _drop_pg_database(dbname)
