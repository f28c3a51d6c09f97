"""Redaction: planted secrets and personal data never survive, lookalikes do, and the selector hands on
a redacted copy of every candidate with counts in its decision."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from collections import Counter
from datetime import UTC, datetime

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Selector
from agent_sleep.selectors.candidates import DocumentCandidate, EpisodeCandidate, FeedbackItem
from agent_sleep.selectors.redact import KINDS, RedactSelector, Redactor

from tests.selectors.redaction_corpus import LOOKALIKES, PLANTED

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def _dump(candidate: object) -> str:
    """Everything a candidate carries, as text: its repr and its JSON."""
    return repr(candidate) + json.dumps(dataclasses.asdict(candidate), default=str)  # type: ignore[call-overload]


def _fragments(secret: str, kind: str) -> list[str]:
    """The secret and, for numbers, its digits without separators (a half-redacted card still leaks)."""
    out = [secret]
    if kind in ("card", "phone", "iban"):
        out.append(re.sub(r"[\s().-]", "", secret))
    return out


@pytest.mark.parametrize("item", PLANTED, ids=[f"{i:02d}-{p.kind}" for i, p in enumerate(PLANTED)])
def test_a_planted_item_is_replaced_by_its_kind(redactor: Redactor, item) -> None:
    out = redactor.redact(item.text)
    for fragment in _fragments(item.secret, item.kind):
        assert fragment not in out.text
    assert f"[{item.kind.upper()}]" in out.text
    assert item.kind in out.counts
    # The findings name kinds and positions only, never the value.
    assert item.secret not in repr(out.findings)


@pytest.mark.parametrize("text", LOOKALIKES)
def test_a_lookalike_survives(redactor: Redactor, text: str) -> None:
    out = redactor.redact(text)
    assert out.text == text, f"redacted {[(f.kind, f.rule, text[f.start:f.end]) for f in out.findings]}"


def test_the_corpora_are_big_enough_and_cover_every_kind() -> None:
    assert len(PLANTED) >= 40 and len(LOOKALIKES) >= 30
    assert {p.kind for p in PLANTED} == set(KINDS)


def test_random_tokens_without_a_known_prefix_or_key_are_caught_by_entropy(redactor: Redactor) -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(alphabet) for _ in range(32)) for _ in range(500)]
    caught = sum(redactor.redact(f"here is the code {t} you asked for").text == "here is the code [SECRET] you asked for"
                 for t in tokens)  # fmt: skip
    assert caught >= 0.97 * len(tokens)  # 99.5% when written; the rest look like glued words
    assert Redactor(entropy=False).redact(f"code {tokens[0]}").text == f"code {tokens[0]}"


def test_redacting_twice_changes_nothing(redactor: Redactor) -> None:
    for item in PLANTED:
        once = redactor.redact(item.text).text
        twice = redactor.redact(once)
        assert twice.text == once and twice.findings == ()


def test_findings_point_into_the_input_and_output_is_deterministic(redactor: Redactor) -> None:
    text = "Mail jane.doe@example.com or call +44 20 7946 0958; key AKIAIOSFODNN7EXAMPLE."
    out = redactor.redact(text)
    assert [(f.kind, text[f.start : f.end]) for f in out.findings] == [
        ("email", "jane.doe@example.com"),
        ("phone", "+44 20 7946 0958"),
        ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ]
    assert out.text == "Mail [EMAIL] or call [PHONE]; key [SECRET]."
    assert Redactor().redact(text) == out


def test_only_the_chosen_kinds_are_redacted() -> None:
    text = "jane.doe@example.com, +1 415 555 2671, 4111 1111 1111 1111"
    assert Redactor(kinds=["email"]).redact(text).text == "[EMAIL], +1 415 555 2671, 4111 1111 1111 1111"
    assert Redactor(kinds=["phone", "card"]).redact(text).text == "jane.doe@example.com, [PHONE], [CARD]"


def test_bad_settings_are_config_errors_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown redaction kind\(s\) \['emails'\]; choose from"):
        Redactor(kinds=["emails"])
    with pytest.raises(ConfigError, match="unknown phone region"):
        Redactor(phone_regions=["XX"])


def test_national_formats_follow_the_phone_regions() -> None:
    text = "call 030 901820 or +49 30 901820"
    assert Redactor(phone_regions=["US"]).redact(text).text == "call 030 901820 or [PHONE]"
    assert Redactor(phone_regions=["DE"]).redact(text).text == "call [PHONE] or [PHONE]"


def test_values_under_credential_keys_are_redacted_whole(redactor: Redactor) -> None:
    counts: Counter[str] = Counter()
    args = {"user": "alice", "password": "correct horse battery staple", "pin": 4821,
            "card": {"number": 4111111111111111, "cvv": "123"}, "max_tokens": 256, "is_secret": True}  # fmt: skip
    out = redactor.redact_value(args, counts)
    assert out == {"user": "alice", "password": "[SECRET]", "pin": "[SECRET]",
                   "card": {"number": "[CARD]", "cvv": "[SECRET]"}, "max_tokens": 256, "is_secret": True}  # fmt: skip
    assert counts == {"secret": 3, "card": 1}


# ---------------------------------------------------------------- the selector


def _episode(i: int, *, user: str, args: object, tool: str, answer: str, comment: str | None = None,
             correction: str | None = None) -> EpisodeCandidate:  # fmt: skip
    messages = (
        {"role": "system", "content": "You are the helpdesk agent."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "lookup", "arguments": args}]},
        {"role": "tool", "name": "lookup", "content": tool},
        {"role": "assistant", "content": answer},
    )
    feedback = (FeedbackItem(f"f{i}", 0.0, "wrong", comment, correction, "human", NOW),)
    return EpisodeCandidate(f"ep{i}", "helpdesk", NOW, "completed", "resolved", messages, feedback)


def _planted_candidates() -> list[EpisodeCandidate | DocumentCandidate]:
    """Every planted item, in turn in each place a candidate carries text."""
    texts = [p.text for p in PLANTED]
    out: list[EpisodeCandidate | DocumentCandidate] = []
    for i in range(0, len(texts), 6):
        t = (texts[i : i + 6] + texts[:6])[:6]
        out.append(_episode(
            i, user=f"Hi, {t[0]}", tool=f"result: {t[2]}", answer=f"Done. {t[3]}", comment=t[4], correction=t[5],
            # tool arguments as nested JSON values and as a JSON string (how OpenAI-style calls carry them)
            args={"query": t[1], "filters": [{"note": t[2]}, t[3]], "raw": json.dumps({"text": t[4]})},
        ))  # fmt: skip
        out.append(DocumentCandidate(f"doc{i}", "helpdesk", f"kb/{i}.md", 1, f"Notes {t[5]}", "\n\n".join(t),
                                     NOW, meta={"author": t[0], "tags": [t[1]]}))  # fmt: skip
    return out


def test_no_planted_item_survives_anywhere_in_a_redacted_candidate() -> None:
    selector = RedactSelector()
    candidates = _planted_candidates()
    before = "".join(_dump(c) for c in candidates)
    assert all(p.secret in before or json.dumps(p.secret)[1:-1] in before for p in PLANTED)
    selection = selector.select(candidates)
    after = "".join(_dump(c) for c in selection.kept)
    leaked = [(p.kind, p.secret) for p in PLANTED for f in _fragments(p.secret, p.kind) if f in after]
    assert leaked == []


def test_the_selector_keeps_every_candidate_in_order_with_counts_in_its_reasons() -> None:
    selector = RedactSelector()
    assert isinstance(selector, Selector) and selector.name == "redact"
    clean = _episode(1, user="Where is order A-10023?", args={"order": "A-10023"}, tool="shipped 2024-03-15",
                     answer="It ships Friday.")  # fmt: skip
    dirty = _episode(2, user="I'm jane.doe@example.com, call +1 415 555 2671", args={"email": "jane.doe@example.com"},
                     tool="ok", answer="Done", comment="she said password=Tr0ub4dor&3",
                     correction="Tell her to use jane.doe@example.com")  # fmt: skip
    doc = DocumentCandidate("d1", "helpdesk", "kb/refunds.md", 2, "Refunds", "Refunds take 5 days.", NOW)
    selection = selector.select([clean, dirty, doc])
    assert [c.id for c in selection.kept] == ["ep1", "ep2", "d1"]
    assert selection.kept[0] == clean and selection.kept[2] == doc  # nothing to redact: unchanged values
    assert [(d.item, d.kept, d.reason, d.selector) for d in selection.decisions] == [
        ("ep1", True, "nothing to redact", "redact"),
        ("ep2", True, "redacted 1 secret, 3 email, 1 phone", "redact"),
        ("d1", True, "nothing to redact", "redact"),
    ]
    red = selection.kept[1]
    assert isinstance(red, EpisodeCandidate)
    assert red.messages[1]["content"] == "I'm [EMAIL], call [PHONE]"
    assert red.messages[2]["tool_calls"] == [{"name": "lookup", "arguments": {"email": "[EMAIL]"}}]
    assert red.feedback[0].comment == "she said password=[SECRET]"
    assert red.feedback[0].correction == "Tell her to use [EMAIL]"
    assert [m["role"] for m in red.messages] == [m["role"] for m in dirty.messages]
    assert (red.id, red.agent, red.started_at, red.feedback[0].id) == (dirty.id, dirty.agent, dirty.started_at, "f2")


def test_the_selector_refuses_what_is_not_a_candidate() -> None:
    with pytest.raises(TypeError, match="episode or document candidates"):
        RedactSelector().select([{"id": "x"}])  # type: ignore[list-item]
