"""Shutting down mid-generation is quick and quiet: in-flight requests get 503 / an error event, no tracebacks."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import ServerThread
from tests.serving.conftest import RecordingResolver, scripted, wait_for

USER = [{"role": "user", "content": "hello there"}]
REPO = Path(__file__).resolve().parents[2]


def test_stopping_the_server_ends_in_flight_requests_with_503(models: RecordingResolver, handle: BaseModelHandle,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    model = scripted(handle, "hello world " * 250, delay=0.02, max_new_tokens=400)  # 8 s if left running
    models.models["slow"] = model
    results: dict[str, Any] = {}
    server = ServerThread(models, graceful_timeout=3).start()

    def ask() -> None:
        results["response"] = httpx.post(f"{server.base_url}/chat/completions", timeout=30,
                                         json={"model": "slow", "messages": USER})

    asking = threading.Thread(target=ask)
    with caplog.at_level(logging.INFO):
        asking.start()
        assert wait_for(lambda: model.produced > 0)
        server.stop()
        asking.join(10)
    response = results["response"]
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_shutting_down"
    assert model.produced < 400 and ("slow", "v0") in models.released
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


SERVE_SCRIPT = """
import sys
from agent_sleep.models.loader import load_base_model
from agent_sleep.serving import StaticResolver
from agent_sleep.serving.server import serve
from tests.serving.conftest import SlowScripted

def say(line):  # one write per line: print() writes its parts separately, and two threads interleave them
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

class Announcing(StaticResolver):
    def resolve(self, name):
        say(f"resolved {name}")
        return super().resolve(name)

class Slow(SlowScripted):
    def _generate_ids(self, handle, input_ids, params):
        say("generating")
        yield from super()._generate_ids(handle, input_ids, params)

handle = load_base_model(sys.argv[1], device="cpu")
slow = Slow(model="slow", handle=handle, scripts=["hello world " * 250], delay=0.02, max_new_tokens=400)
serve(Announcing({"slow": slow}), port=int(sys.argv[2]), log_level="info")
say("serve returned")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_mid_generation_exits_cleanly(handle: BaseModelHandle) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(handle.path), str(port)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    results: dict[str, Any] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": "slow", "messages": USER}

        def plain() -> None:
            results["plain"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)

        def streamed() -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                              timeout=30) as response:
                results["stream"] = (response.status_code, list(response.iter_lines()))

        threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
        for thread in threads:
            thread.start()
        # Both requests in flight: one generating, the other waiting for the model's lock.
        assert wait_for(lambda: lines.count("resolved slow\n") == 2 and "generating\n" in lines, timeout=30), lines
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(20)
        code = process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()  # type: ignore[union-attr]
    assert code == 0, stderr
    assert "serve returned\n" in lines
    for noise in ("Traceback", "CancelledError", "Exception in ASGI", "timeout graceful shutdown exceeded"):
        assert noise not in stderr, stderr
    assert results["plain"].status_code == 503
    status, sse = results["stream"]
    # Cancelled before its first token: a plain 503; mid-stream: an error event, and no [DONE].
    assert status == 503 or (status == 200 and any("shutting down" in line for line in sse)
                             and "data: [DONE]" not in sse), sse
