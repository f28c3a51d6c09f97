"""The one parser of adapter and stack references."""

from __future__ import annotations

import pytest

from agent_sleep.errors import InvalidInputError
from agent_sleep.registry.refs import (
    AdapterRef,
    StackRef,
    is_stack_ref,
    parse_adapter_list,
    parse_adapter_ref,
    parse_ref,
    parse_stack_ref,
)


@pytest.mark.parametrize(("text", "ref"), [
    ("refunds", AdapterRef("refunds")),
    ("refunds@v2", AdapterRef("refunds", version=2)),
    ("refunds@v02", AdapterRef("refunds", version=2)),
    ("refunds@live", AdapterRef("refunds", alias="live")),
    ("refunds@previous", AdapterRef("refunds", alias="previous")),
    ("refunds@candidate", AdapterRef("refunds", alias="candidate")),
    ("  tone.v2_b-1@v10 ", AdapterRef("tone.v2_b-1", version=10)),
])  # fmt: skip
def test_adapter_refs(text: str, ref: AdapterRef) -> None:
    assert parse_adapter_ref(text) == ref
    assert parse_ref(text) == ref
    assert parse_adapter_ref(str(ref)) == ref  # str() is the canonical text
    assert not is_stack_ref(text)


def test_stack_refs() -> None:
    ref = parse_stack_ref("helpdesk:stack@v3")
    assert ref == StackRef("helpdesk", 3) and str(ref) == "helpdesk:stack@v3"
    assert parse_ref(" helpdesk:stack@v3 ") == ref
    assert is_stack_ref("helpdesk:stack@v3") and is_stack_ref("helpdesk:stack@latest")


def test_adapter_lists_split_on_plus() -> None:
    assert parse_adapter_list("refunds@v2+tone") == (AdapterRef("refunds", version=2), AdapterRef("tone"))
    assert parse_adapter_list("refunds@live") == (AdapterRef("refunds", alias="live"),)
    with pytest.raises(InvalidInputError, match="not an adapter reference: ''"):
        parse_adapter_list("refunds++tone")
    with pytest.raises(InvalidInputError, match="unknown alias 'newest'"):
        parse_adapter_list("refunds+tone@newest")


@pytest.mark.parametrize(("text", "message"), [
    ("", "not an adapter reference: ''.*use skill, skill@vN or skill@live"),
    ("refunds@", "not an adapter reference"),
    ("refunds@v", "unknown alias 'v'"),
    ("refunds@V2", "not an adapter reference"),
    ("refunds@v2x", "not an adapter reference"),
    ("refunds@v2@v3", "not an adapter reference"),
    ("@v2", "not an adapter reference"),
    ("refunds@newest", "unknown alias 'newest' in 'refunds@newest'; aliases: live, previous, candidate"),
    ("../evil@v1", "invalid adapter/skill name '../evil'"),
    ("two words", "invalid adapter/skill name"),
    ("refunds@v2+tone", "not an adapter reference"),
    ("helpdesk:stack@v3", "names a stack, not an adapter"),
    (None, "not an adapter reference: None"),
    (3, "not an adapter reference: 3"),
])  # fmt: skip
def test_bad_adapter_refs(text: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_adapter_ref(text)


@pytest.mark.parametrize("text", [
    "helpdesk:stack@latest", "helpdesk:stack@v", "helpdesk:stack@3", ":stack@v1", "a:b:stack@v1", "helpdesk", None,
])  # fmt: skip
def test_bad_stack_refs(text: object) -> None:
    with pytest.raises(InvalidInputError, match=r"not a stack reference: .* \(use agent:stack@vN\)"):
        parse_stack_ref(text)
