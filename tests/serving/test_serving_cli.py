"""The argparse glue the ``agent-sleep`` CLI will use to serve a resolver."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.serving import ServingLimits, StaticResolver, add_serve_arguments, run_serve
from agent_sleep.serving import server as server_mod
from agent_sleep.serving.auth import ALL, Grant


def _parse(*argv: str) -> argparse.Namespace:
    return add_serve_arguments(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What run_serve hands to serve(), which is replaced so that nothing listens."""
    recorded: list[dict[str, Any]] = []
    monkeypatch.setattr(server_mod, "serve", lambda resolver, **kw: recorded.append({"resolver": resolver, **kw}))
    monkeypatch.delenv("AGENT_SLEEP_API_KEY", raising=False)
    monkeypatch.delenv("AGENT_SLEEP_API_KEYS_FILE", raising=False)
    return recorded


def test_defaults_and_env_api_key(calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = StaticResolver({})
    assert run_serve(_parse(), resolver) == 0
    assert calls[-1] == {"resolver": resolver, "host": "127.0.0.1", "port": 8000, "api_key": None, "api_keys": None,
                         "limits": ServingLimits(), "log_level": "info"}
    assert ServingLimits() == ServingLimits(max_tokens=2048, max_body_bytes=4 * 1024 * 1024, reply_attempts=3)

    monkeypatch.setenv("AGENT_SLEEP_API_KEY", "from-env")
    run_serve(_parse("--host", "0.0.0.0", "--port", "9001"), resolver)
    assert calls[-1]["api_key"] == "from-env" and calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9001
    run_serve(_parse("--api-key", "explicit", "--log-level", "warning"), resolver)
    assert calls[-1]["api_key"] == "explicit" and calls[-1]["log_level"] == "warning"

    with pytest.raises(ConfigError, match="--port"):
        run_serve(_parse("--port", "70000"), resolver)
    with pytest.raises(SystemExit):
        _parse("--port", "eighty")


def test_limits_flags(calls: list[dict[str, Any]]) -> None:
    run_serve(_parse("--max-tokens-limit", "512", "--max-body-bytes", "65536"), StaticResolver({}))
    assert calls[-1]["limits"] == ServingLimits(max_tokens=512, max_body_bytes=65536)
    with pytest.raises(ConfigError) as info:
        run_serve(_parse("--max-tokens-limit", "0", "--max-body-bytes", "-1"), StaticResolver({}))
    assert "--max-tokens-limit" in str(info.value) and "--max-body-bytes" in str(info.value)  # both at once


def test_api_keys_file_json_yaml_and_env(calls: list[dict[str, Any]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({"k-help": ["helpdesk"], "k-admin": "*"}))
    run_serve(_parse("--api-keys", str(as_json)), StaticResolver({}))
    keys = calls[-1]["api_keys"]
    assert keys.authorize("Bearer k-help") == Grant(frozenset({"helpdesk"}))
    assert keys.authorize("Bearer k-admin") is ALL

    as_yaml = tmp_path / "keys.yaml"
    as_yaml.write_text("k-ops:\n  - ops\n  - refunds\n")
    monkeypatch.setenv("AGENT_SLEEP_API_KEYS_FILE", str(as_yaml))
    run_serve(_parse(), StaticResolver({}))
    assert calls[-1]["api_keys"].authorize("Bearer k-ops") == Grant(frozenset({"ops", "refunds"}))

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"k1": "everything", "": ["a"], "k3": [5]}))
    with pytest.raises(ConfigError) as info:
        run_serve(_parse("--api-keys", str(bad)), StaticResolver({}))
    message = str(info.value)
    assert "key #1" in message and "key #2" in message and "key #3" in message  # every problem, once
    assert "k1" not in message and "k3" not in message  # keys are secrets: never echoed
    with pytest.raises(ConfigError, match="cannot read"):
        run_serve(_parse("--api-keys", str(tmp_path / "missing.json")), StaticResolver({}))
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        run_serve(_parse("--api-keys", str(tmp_path / "broken.json")), StaticResolver({}))
