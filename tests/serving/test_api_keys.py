"""Per-agent API keys over HTTP: a key sees and uses only its agents' models; docs are off behind keys."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from agent_sleep.errors import APIError
from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.serving import APIKeys, ServerThread
from agent_sleep.serving.auth import ALL, Grant
from tests.serving.conftest import RecordingResolver, scripted

USER = [{"role": "user", "content": "hello there"}]
KEYS = {"k-help": ["helpdesk"], "k-both": ["helpdesk", "tone"], "k-admin": "*"}


@pytest.fixture
def keyed(models: RecordingResolver, handle: BaseModelHandle) -> Iterator[ServerThread]:
    for name in ("helpdesk", "helpdesk:stack@v2", "ops", "tone@v1", "ops+tone@v1"):
        models.models[name] = scripted(handle, f"I am {name}")
    with ServerThread(models, api_key="k-legacy", api_keys=KEYS) as running:
        yield running


def _client(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def test_a_key_uses_only_its_agents_models(keyed: ServerThread, models: RecordingResolver) -> None:
    helpdesk = _client(keyed, "k-help")
    assert [m.id for m in helpdesk.models.list().data] == ["helpdesk"]
    for name in ("helpdesk", "helpdesk:stack@v2"):  # the agent and its pinned stacks
        assert helpdesk.chat.completions.create(model=name, messages=USER).choices[0].message.content == f"I am {name}"
        assert helpdesk.models.retrieve(name).id == name

    # Another agent's model is answered exactly like one that does not exist: names do not leak.
    errors = []
    for name in ("ops", "ops+tone@v1", "no-such-agent"):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as info:
                helpdesk.chat.completions.create(model=name, messages=USER, stream=stream)
            errors.append(info.value.body)
        with pytest.raises(openai.NotFoundError):
            helpdesk.models.retrieve(name)
    assert all(e["code"] == "model_not_found" and e["param"] == "model" for e in errors)
    assert {e["message"].replace("'ops'", "X").replace("'ops+tone@v1'", "X").replace("'no-such-agent'", "X")
            for e in errors} == {"model X does not exist or this API key may not use it"}
    assert not any(name.startswith("ops") for name, _ in models.resolved)  # forbidden names are never resolved


def test_combined_names_need_every_part_and_wide_keys_see_everything(keyed: ServerThread) -> None:
    both = _client(keyed, "k-both")
    assert [m.id for m in both.models.list().data] == ["helpdesk"]  # tone@v1 is pinned, so never listed
    assert both.chat.completions.create(model="tone@v1", messages=USER).choices
    with pytest.raises(openai.NotFoundError):
        both.chat.completions.create(model="ops+tone@v1", messages=USER)
    for key in ("k-admin", "k-legacy"):  # "*" in the file, and the single --api-key
        wide = _client(keyed, key)
        assert [m.id for m in wide.models.list().data] == ["tiny", "helpdesk", "ops"]
        assert wide.chat.completions.create(model="ops+tone@v1", messages=USER).choices
        with pytest.raises(openai.NotFoundError) as info:
            wide.chat.completions.create(model="nope", messages=USER)
        assert info.value.body["message"] == "model 'nope' does not exist"  # the resolver's own message
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "k-unknown").models.list()


def test_docs_and_schema_need_no_key_only_without_keys(keyed: ServerThread, server: ServerThread) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 404
        assert httpx.get(f"{keyed.url}{path}", headers={"Authorization": "Bearer k-admin"}).status_code == 404
    assert httpx.get(f"{server.url}/openapi.json").json()["info"]["title"] == "agent-sleep"  # open server: on
    assert httpx.get(f"{keyed.url}/health").status_code == 200


def test_grant_rules() -> None:
    grant = Grant(frozenset({"helpdesk", "tone"}))
    assert grant.restricted and not ALL.restricted
    allowed = ["helpdesk", "helpdesk:stack@v3", "helpdesk@v2", "tone@v1+helpdesk@v2", "tone"]
    denied = ["helpdeskx", "ops", "ops:stack@v1", "tone@v1+ops", "x:helpdesk", ""]
    assert all(grant.allows(n) for n in allowed) and not any(grant.allows(n) for n in denied)
    assert grant.visible(["ops", "helpdesk", "tone"]) == ["helpdesk", "tone"]
    keys = APIKeys.from_mapping({"a": ["x", "*"], "b": ["x"]})
    assert keys.authorize("Bearer a") is ALL and keys.authorize("bearer  b ") == Grant(frozenset({"x"}))
    for header in ("", "Bearer", "Bearer c", "Basic a"):
        with pytest.raises(APIError) as info:
            keys.authorize(header)
        assert info.value.status == 401
    assert len(APIKeys.single("k").merged(keys)) == 3
