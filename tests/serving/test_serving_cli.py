"""The argparse glue the ``agent-sleep`` CLI will use to serve a resolver."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.serving import StaticResolver, add_serve_arguments, run_serve
from agent_sleep.serving import server as server_mod


def _parse(*argv: str) -> argparse.Namespace:
    return add_serve_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_defaults_and_env_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server_mod, "serve", lambda resolver, **kw: calls.append({"resolver": resolver, **kw}))
    resolver = StaticResolver({})
    monkeypatch.delenv("AGENT_SLEEP_API_KEY", raising=False)
    assert run_serve(_parse(), resolver) == 0
    assert calls[-1] == {"resolver": resolver, "host": "127.0.0.1", "port": 8000, "api_key": None, "log_level": "info"}

    monkeypatch.setenv("AGENT_SLEEP_API_KEY", "from-env")
    run_serve(_parse("--host", "0.0.0.0", "--port", "9001"), resolver)
    assert calls[-1]["api_key"] == "from-env" and calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9001
    run_serve(_parse("--api-key", "explicit", "--log-level", "warning"), resolver)
    assert calls[-1]["api_key"] == "explicit" and calls[-1]["log_level"] == "warning"

    with pytest.raises(ConfigError, match="--port"):
        run_serve(_parse("--port", "70000"), resolver)
    with pytest.raises(SystemExit):
        _parse("--port", "eighty")
