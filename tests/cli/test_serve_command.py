"""`agent-sleep serve` as a user starts it: a process answering OpenAI clients with an agent's live stack."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(env: dict[str, str], *extra: str) -> Iterator[int]:
    """``agent-sleep serve`` in a subprocess on a free port (4-token answers), up and answering; its port."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent_sleep.cli.main", "serve", "--port", str(port),
                             "--max-new-tokens", "4", "--log-level", "warning", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("server did not come up")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_process(tmp_path: Path) -> None:
    import openai

    from agent_sleep.models.loader import load_base_model

    model_dir = make_tiny_model_dir(tmp_path)
    data = tmp_path / "data"
    env = dict(os.environ, AGENT_SLEEP_DATA_DIR=str(data), AGENT_SLEEP_MODEL=str(model_dir))
    registry = AdapterRegistry(ExperienceStore(f"sqlite:///{data / 'experience.sqlite'}"))
    src = write_random(tmp_path / "src", load_base_model(str(model_dir)))
    registry.register(src, "refunds")
    registry.deploy("helpdesk", "refunds@v1")

    with _server(env) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="helpdesk", messages=[{"role": "user", "content": "hi"}])
        assert reply.system_fingerprint == "helpdesk:stack@v1#1"
        registry.deploy("helpdesk", [])  # another process deploys the empty stack: back to the base model
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = client.chat.completions.create(model="helpdesk", messages=[{"role": "user", "content": "hi"}])
            if reply.system_fingerprint == "helpdesk:stack@v2#2":
                break
            time.sleep(0.1)
        assert reply.system_fingerprint == "helpdesk:stack@v2#2"


def test_serve_takes_the_bound_its_stacks_were_validated_with(tmp_path: Path) -> None:
    """A stack deployed with a looser ``--max-delta-norm`` is served by a server started with the same bound
    (without it, the server refuses the stack and answers with the base model)."""
    from agent_sleep.models.loader import load_base_model

    model_dir = make_tiny_model_dir(tmp_path)
    data = tmp_path / "data"
    env = dict(os.environ, AGENT_SLEEP_DATA_DIR=str(data), AGENT_SLEEP_MODEL=str(model_dir))
    registry = AdapterRegistry(ExperienceStore(f"sqlite:///{data / 'experience.sqlite'}"))
    registry.register(write_random(tmp_path / "loud", load_base_model(str(model_dir)), seed=1, std=0.5), "loud")
    registry.deploy("helpdesk", "loud@v1")  # ||ΔW||/||W|| far above the default bound of 1

    with _server(env, "--max-delta-norm", "1000") as port:
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                           json={"model": "helpdesk", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert reply.status_code == 200 and reply.json()["system_fingerprint"] == "helpdesk:stack@v1#1"
