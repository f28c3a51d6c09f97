"""Settings: environment parsed by pydantic-settings, bad values named, explicit arguments on top."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_sleep.config import DEFAULT_MODEL, Settings, get_settings
from agent_sleep.errors import ConfigError

_VARS = ("DATA_DIR", "DATABASE_URL", "CACHE_DIR", "MODEL", "MAX_PAYLOAD_BYTES")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARS:
        monkeypatch.delenv(f"AGENT_SLEEP_{name}", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = get_settings()
    assert s.data_dir == tmp_path / ".agent_sleep" and s.database_url is None
    assert s.cache_dir == tmp_path / "home" / ".cache" / "agent-sleep"
    assert (s.model, s.max_payload_bytes) == (DEFAULT_MODEL, 1_000_000)
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / '.agent_sleep' / 'experience.sqlite').resolve()}"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert get_settings().cache_dir == tmp_path / "xdg" / "agent-sleep"


def test_environment_is_read_and_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENT_SLEEP_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("AGENT_SLEEP_DATABASE_URL", "sqlite:///env.sqlite")
    monkeypatch.setenv("AGENT_SLEEP_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("AGENT_SLEEP_MODEL", "some/model")
    monkeypatch.setenv("AGENT_SLEEP_MAX_PAYLOAD_BYTES", "123")
    monkeypatch.setenv("AGENT_SLEEP_TEST_PG_URL", "postgresql://elsewhere")  # not a setting: ignored
    s = get_settings()
    assert (s.data_dir, s.database_url, s.cache_dir) == (tmp_path / "d", "sqlite:///env.sqlite", tmp_path / "c")
    assert (s.model, s.max_payload_bytes, s.resolved_database_url) == ("some/model", 123, "sqlite:///env.sqlite")
    s = get_settings(data_dir=tmp_path / "x", database_url=None, model="m", max_payload_bytes=7)
    assert (s.data_dir, s.database_url, s.model, s.max_payload_bytes) == (tmp_path / "x", "sqlite:///env.sqlite", "m", 7)
    # A bad environment value does not matter when an explicit argument replaces it.
    monkeypatch.setenv("AGENT_SLEEP_MAX_PAYLOAD_BYTES", "abc")
    assert Settings(max_payload_bytes=5).max_payload_bytes == 5


def test_empty_database_url_and_cache_dir_mean_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENT_SLEEP_DATABASE_URL", "")
    monkeypatch.setenv("AGENT_SLEEP_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = get_settings()
    assert s.database_url is None and s.cache_dir == tmp_path / "xdg" / "agent-sleep"


@pytest.mark.parametrize("value", ["abc", "-5", "0", "", "1.5"])
def test_bad_environment_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AGENT_SLEEP_MAX_PAYLOAD_BYTES", value)
    with pytest.raises(ConfigError, match=f"AGENT_SLEEP_MAX_PAYLOAD_BYTES='{value}'"):
        get_settings()
    with pytest.raises(ConfigError, match="AGENT_SLEEP_MAX_PAYLOAD_BYTES"):
        Settings(data_dir=Path("elsewhere"))


def test_bad_explicit_arguments_raise_pydantic_errors_as_before() -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings(max_payload_bytes=-1)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(max_payload_byte=10)  # type: ignore[call-arg]
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.model = "x"  # type: ignore[misc]


def test_cli_reports_a_bad_environment_value(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:  # fmt: skip
    from agent_sleep.cli.main import main

    monkeypatch.setenv("AGENT_SLEEP_MAX_PAYLOAD_BYTES", "lots")
    assert main(["--data-dir", str(tmp_path), "init"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid settings: AGENT_SLEEP_MAX_PAYLOAD_BYTES='lots'") and "Traceback" not in err
