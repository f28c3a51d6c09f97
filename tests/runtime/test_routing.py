"""Per-request routing: a routed adapter applies only to requests like its keys (tiny model, word embedder)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent_sleep.adapters.artifact import read_adapter, set_routing
from agent_sleep.adapters.manifest import RoutingSpec
from agent_sleep.config import Settings
from agent_sleep.errors import AdapterFormatError, ConfigError
from agent_sleep.registry import AdapterRegistry
from agent_sleep.runtime.routing import Router, applying, last_user_text
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir


class WordEmbedder:
    """Bag of words hashed into 64 dimensions, L2-normalised: texts sharing words are close."""

    name = "all-MiniLM-L6-v2"
    dim = 64

    def __init__(self, known: frozenset[str] = frozenset()) -> None:
        self.calls = 0
        self.known = known

    def words(self) -> frozenset[str]:
        return self.known

    def embed(self, texts: Sequence[str], /) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace("?", " ").split():
                out[row, sum(map(ord, word)) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


SPEC = RoutingSpec(threshold=0.5, keys=["where is my order", "when does my order arrive"])


def test_a_similarity_table_embeds_the_texts_once_for_every_adapter() -> None:
    embedder = WordEmbedder()
    router = Router(embedder)
    specs = {"orders@v1": SPEC, "peru@v1": SPEC.model_copy(update={"keys": ["capital of peru"]})}
    texts = ["where is my order", "the capital of peru", "hello"]
    expected = np.stack([router.similarities(n, s, texts) for n, s in specs.items()], axis=1)
    calls = embedder.calls
    table = router.similarity_table(specs, texts)
    assert embedder.calls == calls + 1 and table.shape == (3, 2)
    np.testing.assert_allclose(table, expected)
    assert table[0, 0] > table[0, 1] and table[1, 1] > table[1, 0]
    assert router.similarity_table(specs, []).shape == (0, 2) and router.similarity_table({}, texts).shape == (3, 0)


def test_router_scores_and_picks_the_active_items() -> None:
    embedder = WordEmbedder()
    router = Router(embedder)
    assert router.fires("orders@v1", SPEC, "where is my order A1?")
    assert not router.fires("orders@v1", SPEC, "what is the capital of peru")
    calls = embedder.calls
    router.similarity("orders@v1", SPEC, "where is my order")
    assert embedder.calls == calls + 1  # the keys are embedded once per adapter, only the request again
    items = (("orders@v1", 1.0), ("tone@v1", 0.5))
    specs = {"orders@v1": SPEC, "tone@v1": None}
    assert router.active(items, specs, "capital of peru") == (("tone@v1", 0.5),)
    assert router.active(items, specs, "where is my order") == items
    assert router.active(items, specs, None) == items  # no user message: nothing to route by
    both = {"orders@v1": SPEC, "tone@v1": SPEC.model_copy(update={"keys": ["capital of peru"]})}
    router.active(items, both, "warm the key caches")
    calls = embedder.calls
    assert router.active(items, both, "capital of peru") == (("tone@v1", 0.5),)
    assert embedder.calls == calls + 1  # the request is embedded once, not once per routed adapter
    with pytest.raises(ConfigError, match="encoder"):
        router.fires("x@v1", SPEC.model_copy(update={"encoder": "other-encoder"}), "hi")


def test_adapters_of_one_group_compete_only_the_closest_applies() -> None:
    docs = RoutingSpec(threshold=0.3, keys=["x"], group="d2l")
    specs = {"a@v1": docs, "b@v1": docs, "c@v1": docs.model_copy(update={"group": None}), "d@v1": None}
    # a and b both fire: only b (closer) applies; c has no group and applies; d is not routed (always applies)
    assert applying({"a@v1": 0.5, "b@v1": 0.7, "c@v1": 0.4}, specs) == {"b@v1", "c@v1"}
    assert applying({"a@v1": 0.5, "b@v1": 0.2, "c@v1": 0.1}, specs) == {"a@v1"}  # b does not fire: a is the best
    assert applying({"a@v1": 0.6, "b@v1": 0.6}, specs) == {"a@v1"}  # a tie goes to the first name
    assert applying({"a@v1": 0.1, "b@v1": 0.2}, specs) == set()
    other = {**specs, "b@v1": docs.model_copy(update={"group": "t2l"})}
    assert applying({"a@v1": 0.5, "b@v1": 0.7}, other) == {"a@v1", "b@v1"}  # other groups do not compete
    router = Router(WordEmbedder())
    orders = SPEC.model_copy(update={"group": "d2l"})
    refunds = RoutingSpec(threshold=0.3, keys=["where is my refund for the order"], group="d2l")
    items = (("orders@v1", 1.0), ("refunds@v1", 1.0))
    both = {"orders@v1": orders, "refunds@v1": refunds}
    text = "where is my order"
    assert router.similarity("orders@v1", orders, text) > router.similarity("refunds@v1", refunds, text) >= 0.3
    assert router.active(items, both, text) == (("orders@v1", 1.0),)
    ungrouped = {n: s.model_copy(update={"group": None}) for n, s in both.items()}
    assert router.active(items, ungrouped, text) == items
    assert RoutingSpec.model_validate({"keys": ["k"]}).group is None  # manifests written before groups


def test_a_rare_name_the_keys_hold_adds_the_name_bonus() -> None:
    """A question that names the document's invented organisation reaches its adapter even where its other words
    differ; a common capitalised word ("Peru", known to the encoder) or a name the keys lack adds nothing."""
    from agent_sleep.key_terms import rare_names

    known = frozenset({"peru", "mills", "what", "the"})
    assert rare_names("What do you type on the keypad of Ravdell Mills?", known) == {"ravdell"}
    assert rare_names("Is Ravdell's alarm on? Ask PX at KORVANE or Peru.", known) == {"ravdell", "korvane"}
    assert rare_names("Ravdell opens at nine.", known) == set()  # capitalised as a sentence's first word only
    embedder = WordEmbedder(known)
    router = Router(embedder)
    plain = RoutingSpec(threshold=0.3, keys=["Ravdell Mills set its alarm to switch off on 4019."])
    named = plain.model_copy(update={"name_bonus": 0.3})
    question = "which digits does the side door keypad of Ravdell Mills take?"
    base = router.similarity("alarm@v1", plain, question)
    assert base < 0.3 and not router.fires("alarm@v1", plain, question)
    assert router.similarity("alarm@v2", named, question) == pytest.approx(base + 0.3)
    assert router.fires("alarm@v2", named, question)
    other = "which digits does the side door keypad of Kelford Works take?"  # a name the keys do not hold
    assert router.similarity("alarm@v2", named, other) == pytest.approx(router.similarity("alarm@v1", plain, other))
    peru = RoutingSpec(threshold=0.5, keys=["Our office in Peru opens at nine."], name_bonus=0.3)
    assert router.similarity("peru@v1", peru, "what is the capital of Peru") == pytest.approx(
        router.similarity("peru@v0", peru.model_copy(update={"name_bonus": 0.0}), "what is the capital of Peru"))
    # the runtime and the gate decide with the same number
    items = (("alarm@v2", 1.0),)
    assert router.active(items, {"alarm@v2": named}, question) == items
    assert router.active(items, {"alarm@v2": plain}, question) == ()
    sims, _ = router.match("alarm@v2", named, [question, other])
    assert sims.tolist() == pytest.approx(router.similarities("alarm@v2", named, [question, other]).tolist())
    assert RoutingSpec.model_validate({"keys": ["k"]}).name_bonus == 0.0  # manifests written before it: keys only

    class NoWords:  # an embedder written before words(): named, not silently replaced by MiniLM
        name, dim = "all-MiniLM-L6-v2", 64

        def embed(self, texts: Sequence[str], /) -> np.ndarray:
            return np.zeros((len(texts), 64), dtype=np.float32)

    with pytest.raises(ConfigError, match=r"NoWords is not an Embedder.*words\(\)"):
        Router(NoWords())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RoutingSpec(keys=["k"], name_bonus=1.5)


def test_last_user_text() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    assert last_user_text([SystemMessage("s"), HumanMessage("first"), AIMessage("a"), HumanMessage("second")]) == \
        "second"  # fmt: skip
    assert last_user_text([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
    assert last_user_text([SystemMessage("only")]) is None


def test_routing_spec_is_validated() -> None:
    with pytest.raises(ValueError):
        RoutingSpec(keys=[])
    with pytest.raises(ValueError):
        RoutingSpec(keys=["ok", "  "])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from agent_sleep.models.loader import load_base_model

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return folder, load_base_model(str(folder))


def test_a_routed_adapter_runs_only_on_requests_like_its_keys(tiny: tuple[Path, Any], settings: Settings,
                                                              tmp_path: Path) -> None:  # fmt: skip
    from agent_sleep.runtime.live import LiveRuntime

    folder, handle = tiny
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    routed = write_random(tmp_path / "orders", handle, seed=1, std=0.5)
    assert set_routing(routed, SPEC).routing == SPEC
    set_routing(routed, SPEC)  # idempotent
    assert read_adapter(routed).manifest.routing == SPEC  # the weights' hash still verifies
    registry.register(routed, "orders")
    registry.register(write_random(tmp_path / "tone", handle, seed=2, std=0.5), "tone")
    assert json.loads((Path(registry.get("orders@v1").path) / "manifest.json").read_text())["routing"]["keys"] == \
        SPEC.keys  # fmt: skip
    runtime = LiveRuntime(registry, handle=handle, max_delta_norm=1000.0)
    runtime.router = Router(WordEmbedder())
    try:
        runtime.deploy("helpdesk", [("orders@v1", 1.0), ("tone@v1", 1.0)])
        chat = runtime.chat_model("helpdesk", max_new_tokens=8)
        near = chat.invoke("where is my order B2?")
        far = chat.invoke("what is the capital of peru")
        assert near.response_metadata["stack"] == "helpdesk:stack@v1"
        assert far.response_metadata["stack"] == "tone@v1"
        # off its keys the request runs exactly as on the rest of the stack
        alone = runtime.chat_model(adapters=["tone@v1"], max_new_tokens=8).invoke("what is the capital of peru")
        assert far.text == alone.text
        only_routed = runtime.prepare_adapters(["orders@v1"])
        assert runtime.route(only_routed, "capital of peru") is None  # nothing applies: the base model
        assert runtime.route(only_routed, "where is my order") is only_routed
        assert runtime.route(only_routed, None) is only_routed
        assert runtime.routing("tone@v1") is None
    finally:
        runtime.stop()


def test_set_routing_needs_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError):
        set_routing(tmp_path, SPEC)


SECTIONED = RoutingSpec(threshold=0.5, keys=["opening hours of the depot"],
                        sections=[{"start": 0, "stop": 2, "keys": ["the depot opens at nine", "ask about parking"]},
                                  {"start": 2, "stop": 4, "keys": ["the keypad code of the depot is 4417"]},
                                  {"start": 4, "stop": 6, "keys": ["returns are taken until friday"]}])  # fmt: skip


def test_a_sectioned_adapter_applies_as_the_section_closest_to_the_request() -> None:
    from agent_sleep.runtime.routing import section_name, split_section

    router = Router(WordEmbedder())
    # the adapter fires on its own keys or any section's, and serves the closest section
    assert router.fires("depot@v1", SECTIONED, "what is the keypad code of the depot")
    assert router.fires("depot@v1", SECTIONED, "until when are returns taken")
    assert router.sections("depot@v1", SECTIONED, ["the keypad code please", "returns until when", "parking?"]
                           ).tolist() == [1, 2, 0]  # fmt: skip
    assert router.sections("orders@v1", SPEC, ["where is my order"]).tolist() == [-1]  # no sections
    items = (("depot@v1", 1.0), ("tone@v1", 0.5))
    specs = {"depot@v1": SECTIONED, "tone@v1": None}
    assert router.active(items, specs, "what is the keypad code of the depot") == (("depot@v1#1", 1.0),
                                                                                     ("tone@v1", 0.5))  # fmt: skip
    assert router.active(items, specs, "capital of peru") == (("tone@v1", 0.5),)
    assert section_name("depot@v1", 2) == "depot@v1#2" and split_section("depot@v1#2") == ("depot@v1", 2)
    assert split_section("depot@v1") == ("depot@v1", None) and split_section("a#b") == ("a#b", None)


def test_section_layers_keep_the_section_and_the_rows_no_section_claims() -> None:
    import torch

    from agent_sleep.adapters.artifact import LoraWeights
    from agent_sleep.adapters.sections import section_layers

    a, b = torch.arange(16.0).reshape(8, 2), torch.arange(24.0).reshape(3, 8)
    layers = {"m": LoraWeights(A=a, B=b, scaling=0.25)}
    cut = section_layers(layers, SECTIONED, 1)["m"]  # rows 2-3, plus 6-7 (no section's)
    torch.testing.assert_close(cut.A, a[[2, 3, 6, 7]])
    torch.testing.assert_close(cut.B, b[:, [2, 3, 6, 7]])
    assert cut.scaling == 0.25
    with pytest.raises(AdapterFormatError, match="not a section 3"):
        section_layers(layers, SECTIONED, 3)
    short = {"m": LoraWeights(A=a[:5], B=b[:, :5], scaling=1.0)}
    with pytest.raises(AdapterFormatError, match="rank 5"):
        section_layers(short, SECTIONED, 0)


def test_routed_sections_are_validated() -> None:
    one = {"start": 0, "stop": 2, "keys": ["a"]}
    with pytest.raises(ValueError, match="overlap"):
        RoutingSpec(keys=["k"], sections=[one, {"start": 1, "stop": 3, "keys": ["b"]}])
    with pytest.raises(ValueError, match="one section"):
        RoutingSpec(keys=["k"], sections=[one])
    with pytest.raises(ValueError, match="must not be empty"):
        RoutingSpec(keys=["k"], sections=[one, {"start": 4, "stop": 4, "keys": ["b"]}])
    with pytest.raises(ValueError):
        RoutingSpec(keys=["k"], sections=[one, {"start": 4, "stop": 6, "keys": [" "]}])


def test_a_sectioned_adapter_runs_only_its_routed_section(tiny: tuple[Path, Any], settings: Settings,
                                                          tmp_path: Path) -> None:  # fmt: skip
    import torch

    from agent_sleep.adapters.artifact import lora_layers
    from agent_sleep.adapters.stack import prepare_stack
    from agent_sleep.adapters.sections import section_layers
    from agent_sleep.runtime.live import LiveRuntime

    folder, handle = tiny
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    depot = write_random(tmp_path / "depot", handle, r=8, seed=3, std=0.5)
    set_routing(depot, SECTIONED)
    registry.register(depot, "depot")
    runtime = LiveRuntime(registry, handle=handle, max_delta_norm=1000.0)
    runtime.router = Router(WordEmbedder())
    try:
        runtime.deploy("yard", [("depot@v1", 1.0)])
        chat = runtime.chat_model("yard", max_new_tokens=8)
        keypad = chat.invoke("what is the keypad code of the depot")
        assert keypad.response_metadata["stack"] == "depot@v1#1"
        # what ran is exactly the section's rows (and the unclaimed ones), as the gate scores it by name
        alone = runtime.chat_model(adapters=["depot@v1#1"], max_new_tokens=8).invoke(
            "what is the keypad code of the depot")  # fmt: skip
        assert keypad.text == alone.text
        cut = section_layers(lora_layers(read_adapter(depot)), SECTIONED, 1)
        manual = prepare_stack("manual", [("manual", cut, 1.0)], dtype=handle.dtype, device=handle.device)
        served = runtime.route(runtime.pin("yard"), "what is the keypad code of the depot")
        assert served.items == (("depot@v1#1", 1.0),) and served.total_rank == 4  # 2 section rows + 2 unclaimed
        for module, ((a, b),) in served.layers.items():
            torch.testing.assert_close(a, manual.layers[module][0][0])
            torch.testing.assert_close(b, manual.layers[module][0][1])
        named = runtime.chat_model(adapters=["depot@v1"], max_new_tokens=8).invoke("the keypad code of the depot")
        assert named.response_metadata["stack"] == "depot@v1#1"  # named explicitly, it is routed the same way
        whole = runtime.prepare_adapters(["depot@v1"])
        assert runtime.route(whole, None) is whole and whole.total_rank == 8  # no request text: every row
        assert chat.invoke("capital of peru").response_metadata["stack"] is None  # fires on nothing: base model
    finally:
        runtime.stop()


def test_validation_bounds_each_routed_section_as_served(tiny: tuple[Path, Any], tmp_path: Path) -> None:
    """A long document's adapter sums past the delta bound when every chunk is added up, but a request gets one
    section: the adapter and the stack are bounded as served, and the same weights unrouted are still refused."""
    from agent_sleep.adapters.artifact import lora_layers, read_manifest
    from agent_sleep.adapters.validation import validate_adapter, validate_stack

    _, handle = tiny
    folder = write_random(tmp_path / "depot", handle, r=8, seed=3, std=0.5)
    whole = validate_adapter(read_adapter(folder), handle, max_delta_norm=1.0, reload=False)
    whole_ratio = next(c.value for c in whole.checks if c.name == "delta_norm")
    set_routing(folder, SECTIONED)
    assert read_manifest(folder).routing == SECTIONED  # type: ignore[union-attr]
    served = validate_adapter(read_adapter(folder), handle, max_delta_norm=1.0, reload=False)
    check = next(c for c in served.checks if c.name == "delta_norm")
    assert "3 routed sections" in check.detail and check.value < whole_ratio  # 4 of 8 rows, not all 8
    bound = (check.value + whole_ratio) / 2  # between one section as served and the whole adapter
    assert validate_adapter(read_adapter(folder), handle, max_delta_norm=bound, reload=False).ok
    set_routing(folder, None)
    assert not validate_adapter(read_adapter(folder), handle, max_delta_norm=bound, reload=False).ok
    layers = lora_layers(read_adapter(folder))
    items = [("depot@v1", layers, 1.0)]
    assert validate_stack(items, handle, max_delta_norm=bound, routing={"depot@v1": SECTIONED}).ok
    assert not validate_stack(items, handle, max_delta_norm=bound).ok
