"""Registry contract: versions, aliases, stacks, deployments, rollback, races (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent_sleep.errors import (
    AdapterFormatError,
    DeployConflictError,
    DeploymentError,
    InvalidInputError,
    NotFoundError,
    NothingToRollBackError,
    TamperedAdapterError,
)
from agent_sleep.registry import AdapterRegistry
from agent_sleep.registry.notify import listen
from agent_sleep.registry.records import Rejection, StackItem
from agent_sleep.registry.refs import AdapterRef, StackRef
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import BASE_HASH, write_random


@pytest.fixture
def registry(store: ExperienceStore) -> AdapterRegistry:
    return AdapterRegistry(store)


def _register(registry: AdapterRegistry, tmp_path: Path, skill: str, seed: int = 0) -> str:
    folder = write_random(tmp_path / f"src-{skill}-{seed}", seed=seed)
    return registry.register(folder, skill, description=f"{skill} skill", agent="helpdesk").name


def test_register_versions_are_immutable_and_numbered(registry: AdapterRegistry, tmp_path: Path) -> None:
    assert _register(registry, tmp_path, "refunds", 0) == "refunds@v1"
    assert _register(registry, tmp_path, "refunds", 1) == "refunds@v2"
    v1 = registry.get("refunds@v1")
    assert v1.status == "candidate" and v1.base_model_hash == BASE_HASH and v1.rank == 4
    assert Path(v1.path).is_dir() and json.loads((Path(v1.path) / "manifest.json").read_text())["version"] == 1
    assert registry.get("refunds@candidate").name == "refunds@v2"
    assert registry.get("refunds").name == "refunds@v2"  # nothing live yet: newest usable
    assert [a.name for a in registry.adapters(skill="refunds")] == ["refunds@v1", "refunds@v2"]


def test_bad_adapters_are_refused(registry: AdapterRegistry, tmp_path: Path) -> None:
    folder = write_random(tmp_path / "a")
    with pytest.raises(InvalidInputError, match="invalid adapter/skill name"):
        registry.register(folder, "../evil")
    with pytest.raises(InvalidInputError, match="invalid adapter/skill name"):
        registry.register(folder, "a/b")
    with pytest.raises(AdapterFormatError, match="does not exist"):
        registry.register(tmp_path / "nope", "x")
    half = write_random(tmp_path / "half")
    (half / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFormatError, match="missing adapter_model.safetensors"):
        registry.register(half, "x")
    tampered = write_random(tmp_path / "t")
    with (tampered / "adapter_model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(TamperedAdapterError, match="modified after it was written"):
        registry.register(tampered, "x")
    assert registry.adapters() == []
    assert not (registry.root / "x").exists()


def test_deploy_rollback_history(registry: AdapterRegistry, tmp_path: Path) -> None:
    with pytest.raises(NothingToRollBackError):
        registry.rollback("helpdesk")
    a1, b1 = _register(registry, tmp_path, "refunds"), _register(registry, tmp_path, "tone")
    d1 = registry.deploy("helpdesk", a1, actor="test", reason="first skill")
    assert d1.seq == 1 and d1.stack.name == "helpdesk:stack@v1" and registry.get(a1).status == "live"
    d2 = registry.deploy("helpdesk", [(a1, 1.0), (b1, 0.5)], reason="add tone")
    assert [(i.adapter, i.weight) for i in d2.stack.items] == [(a1, 1.0), (b1, 0.5)]
    a2 = _register(registry, tmp_path, "refunds", seed=5)
    d3 = registry.deploy("helpdesk", [(a2, 1.0), (b1, 0.5)], reason="better refunds")
    assert registry.get(a1).status == "retired" and registry.get("refunds@live").name == a2
    assert registry.get("refunds@previous").name == a1

    r1 = registry.rollback("helpdesk", reason="regression")
    assert r1.kind == "rollback" and r1.stack.id == d2.stack.id and r1.seq == 4
    assert registry.get(a2).status == "rolled_back" and registry.get(a1).status == "live"
    r2 = registry.rollback("helpdesk")  # undo stack: one further back
    assert r2.stack.id == d1.stack.id
    with pytest.raises(NothingToRollBackError):
        registry.rollback("helpdesk")
    r3 = registry.rollback("helpdesk", to=d3.id)  # explicit target
    assert r3.stack.id == d3.stack.id
    assert [d.seq for d in registry.deployments("helpdesk")] == [1, 2, 3, 4, 5, 6]  # history only grows
    assert registry.stacks("helpdesk")[-1].name == "helpdesk:stack@v3"  # identical stacks are reused

    removed = registry.remove_skill("helpdesk", "tone")
    assert [i.adapter for i in removed.stack.items] == [a2] and removed.kind == "remove_skill"
    with pytest.raises(NotFoundError, match="not in the live stack"):
        registry.remove_skill("helpdesk", "tone")
    lineage = registry.lineage(a2)
    assert lineage["adapter"]["name"] == a2 and len(lineage["deployments"]) >= 2


def test_stack_rules(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1 = _register(registry, tmp_path, "refunds")
    with pytest.raises(InvalidInputError, match="each skill once"):
        registry.create_stack("helpdesk", [a1, a1])
    with pytest.raises(NotFoundError, match="ghost@v1"):
        registry.create_stack("helpdesk", ["ghost@v1"])
    with pytest.raises(NotFoundError, match="no stack"):
        registry.get_stack("helpdesk:stack@v9")
    with pytest.raises(InvalidInputError, match="unknown alias"):
        registry.get("refunds@newest")
    with pytest.raises(InvalidInputError, match="not a stack reference"):
        registry.get_stack("helpdesk:stack@latest")
    with pytest.raises(InvalidInputError, match="names a stack, not an adapter"):
        registry.get("helpdesk:stack@v1")


def test_typed_references(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1 = _register(registry, tmp_path, "refunds")
    assert registry.get(AdapterRef("refunds", version=1)).name == a1
    dep = registry.deploy("helpdesk", AdapterRef("refunds"))
    assert registry.get(AdapterRef("refunds", alias="live")).name == a1
    assert registry.get_stack(StackRef("helpdesk", 1)) == dep.stack == registry.get_stack(dep.stack.id)
    assert registry.deploy("helpdesk", StackRef("helpdesk", 1)).stack == dep.stack
    with pytest.raises(InvalidInputError, match="belongs to agent 'helpdesk'"):
        registry.deploy("sales", StackRef("helpdesk", 1))


def test_a_deploy_wakes_listeners(registry: AdapterRegistry, tmp_path: Path) -> None:
    if registry.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only; other databases are polled")
    a1 = _register(registry, tmp_path, "refunds")
    heard: list[str] = []
    listening, stop = threading.Event(), threading.Event()

    def on_wake(agent: str | None) -> None:
        if agent is None:
            listening.set()  # the first call comes after LISTEN, then one per quiet interval
        else:
            heard.append(agent)
            stop.set()

    thread = threading.Thread(target=listen, args=(registry.engine.url, on_wake, stop), kwargs={"interval": 0.05})
    thread.start()
    try:
        assert listening.wait(10)
        registry.deploy("helpdesk", a1)
        thread.join(10)
    finally:
        stop.set()
        thread.join(10)
    assert heard == ["helpdesk"] and not thread.is_alive()


def test_racing_deploys_one_wins(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1, b1 = _register(registry, tmp_path, "refunds"), _register(registry, tmp_path, "tone")
    registry.deploy("helpdesk", a1)
    seen = registry.live("helpdesk").seq  # type: ignore[union-attr]
    registry.deploy("helpdesk", b1, expected_seq=seen)
    with pytest.raises(DeployConflictError, match="nothing was deployed"):
        registry.deploy("helpdesk", a1, expected_seq=seen)
    assert registry.live("helpdesk").stack.items[0].adapter == b1  # type: ignore[union-attr]

    results: list[str] = []
    barrier = threading.Barrier(4)

    def racer(ref: str) -> None:
        barrier.wait()
        try:
            registry.deploy("helpdesk", ref, expected_seq=2)
            results.append("won")
        except DeployConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=racer, args=(ref,)) for ref in (a1, b1, a1, b1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict", "conflict", "conflict", "won"]
    assert registry.live("helpdesk").seq == 3  # type: ignore[union-attr]


def _tamper(registry: AdapterRegistry, ref: str) -> None:
    with (Path(registry.get(ref).path) / "adapter_model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")


POLICY = Rejection(check="delta_norm", kind="policy", base_model_hash=BASE_HASH, policy={"max_delta_norm": 0.1})


def test_weights_are_checked_before_anything_is_written(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1 = _register(registry, tmp_path, "refunds")
    for bad in (float("nan"), float("inf"), 0.0, 1e6, -4.5, "x"):
        with pytest.raises(InvalidInputError, match="weight of 'refunds@v1'"):
            registry.deploy("helpdesk", [(a1, bad)])
        with pytest.raises(InvalidInputError, match="weight of 'refunds@v1'"):
            registry.create_stack("helpdesk", [(a1, bad)])
    assert registry.stacks() == [] and registry.live("helpdesk") is None
    assert registry.stack_items([("refunds", -0.5)]) == (StackItem(adapter=a1, weight=-0.5),)
    assert registry.stacks() == []  # resolving a stack writes nothing
    assert registry.deploy("helpdesk", [(a1, 4.0)]).stack.items[0].weight == 4.0


def test_a_rejected_version_is_never_served_through_an_alias(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1, a2 = _register(registry, tmp_path, "refunds", 0), _register(registry, tmp_path, "refunds", 1)
    registry.deploy("helpdesk", a1)
    registry.deploy("helpdesk", a2)
    assert registry.get(a1).aliases == ("previous",) and registry.get(a2).aliases == ("candidate", "live")
    rec = registry.reject(a2, "delta_norm: too large", POLICY, actor="test")
    assert rec.status == "rejected" and rec.aliases == () and rec.rejection == POLICY
    for alias in ("refunds@live", "refunds@candidate"):
        with pytest.raises(NotFoundError):
            registry.get(alias)
    assert registry.get("refunds").name == a1  # bare skill: the newest version that is not rejected
    assert registry.get(a2).name == a2  # an exact version can still be looked at
    with pytest.raises(DeploymentError, match="holds rejected versions.*refunds@v2"):
        registry.deploy("helpdesk", a2)
    with pytest.raises(DeploymentError, match="rejected"):
        registry.deploy("sales", [a2])
    assert registry.stacks("sales") == []  # the refused deploy left no stack behind
    registry.deploy("helpdesk", a1)  # #3 (a1 again)
    with pytest.raises(DeploymentError, match="rejected"):
        registry.rollback("helpdesk")  # back to a2's stack: refused, nothing changes
    assert registry.live("helpdesk").seq == 3  # type: ignore[union-attr]
    assert registry.get(a2).status == "rejected"


def test_status_transitions_are_validated_and_recorded(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1, b1 = _register(registry, tmp_path, "refunds"), _register(registry, tmp_path, "tone")
    with pytest.raises(InvalidInputError, match="status must be one of"):
        registry.set_status(a1, "shiny")
    registry.reject(a1, "delta_norm: 2.2 > 0.1", POLICY, actor="deployer")
    with pytest.raises(InvalidInputError, match="is rejected; it cannot become live"):
        registry.set_status(a1, "live")
    with pytest.raises(InvalidInputError, match="out of use already"):
        registry.retire(a1)
    assert registry.approve(a1, actor="alice", reason="looked at it").status == "approved"
    assert registry.approve(a1).status == "approved"  # again: nothing changes, nothing recorded
    registry.deploy("helpdesk", a1)
    with pytest.raises(InvalidInputError, match="is live"):
        registry.approve(a1)
    with pytest.raises(DeploymentError, match="is live for helpdesk"):
        registry.retire(a1)
    assert registry.retire(b1, actor="bob").status == "retired"
    assert registry.get(b1).aliases == ()  # no longer the candidate
    assert "tone@v1" not in [a.name for a in registry.adapters(status="candidate")]
    history = [(c.from_status, c.to_status, c.actor) for c in registry.status_history(a1)]
    assert history == [("candidate", "rejected", "deployer"), ("rejected", "approved", "alice"),
                       ("approved", "live", "user")]
    assert registry.status_history(a1)[0].detail == POLICY.model_dump(mode="json")
    assert [h["to"] for h in registry.lineage(a1)["status_history"]] == ["rejected", "approved", "live"]

    c1 = _register(registry, tmp_path, "billing")
    _tamper(registry, c1)
    registry.reject(c1, "tampered", Rejection(check="integrity", kind="integrity"))
    with pytest.raises(InvalidInputError, match="integrity check"):
        registry.approve(c1)
    registry.set_status(c1, "rejected", "by hand")  # no detail: a manual rejection, approve lifts it
    assert registry.get(c1).rejection == Rejection(check="unknown", kind="manual")
    assert registry.approve(c1).status == "approved"


def test_a_rejection_says_when_to_look_again() -> None:
    other = "cd" * 32
    assert POLICY.applies(base_model_hash=BASE_HASH, max_delta_norm=0.1)
    assert POLICY.applies(base_model_hash=BASE_HASH, max_delta_norm=0.05)  # stricter: fails again for sure
    assert not POLICY.applies(base_model_hash=BASE_HASH, max_delta_norm=1.0)  # looser: validate again
    assert not POLICY.applies(base_model_hash=other, max_delta_norm=0.1)  # other weights: other norms
    compat = Rejection(check="base_model", kind="compatibility", base_model_hash=BASE_HASH)
    assert compat.applies(base_model_hash=BASE_HASH, max_delta_norm=1e9)
    assert not compat.applies(base_model_hash=other, max_delta_norm=1.0)
    broken = Rejection(check="integrity", kind="integrity", base_model_hash=BASE_HASH)
    assert broken.applies(base_model_hash=other, max_delta_norm=1e9)
    stored = {**POLICY.model_dump(mode="json"), "from_a_newer_version": 1}  # stored detail tolerates new keys
    assert Rejection.model_validate(stored) == POLICY


def test_a_deployment_keeps_its_detail(registry: AdapterRegistry, tmp_path: Path) -> None:
    a1, b1 = _register(registry, tmp_path, "refunds"), _register(registry, tmp_path, "tone")
    d1 = registry.deploy("helpdesk", a1)
    assert d1.detail is None
    d2 = registry.deploy("helpdesk", b1, detail={"gate": {"delta": 0.25, "n": 16}})
    assert d2.detail == {"gate": {"delta": 0.25, "n": 16}} == registry.deployment(d2.id).detail
    with pytest.raises(InvalidInputError, match="detail must be JSON"):
        registry.rollback("helpdesk", detail={"p": float("nan")})
    assert registry.live("helpdesk") == registry.deployment(d2.id)  # nothing written
    with pytest.raises(DeployConflictError, match="expected #1"):
        registry.rollback("helpdesk", expected_seq=1, detail={"why": "stale"})
    r = registry.rollback("helpdesk", expected_seq=2, detail={"why": "numbers"})
    assert (r.kind, r.detail, r.stack.id) == ("rollback", {"why": "numbers"}, d1.stack.id)
    assert [d.detail for d in registry.deployments("helpdesk")] == [None, d2.detail, {"why": "numbers"}]


def test_rolling_back_the_first_deployment_returns_to_the_base_model(registry: AdapterRegistry,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    a1 = _register(registry, tmp_path, "refunds")
    d1 = registry.deploy("helpdesk", a1, actor="test", reason="first night")
    back = registry.rollback("helpdesk", reason="regression")
    assert back.kind == "rollback" and back.stack.items == () and back.seq == 2
    assert registry.live("helpdesk").stack.items == () and registry.get(a1).status == "rolled_back"
    with pytest.raises(NothingToRollBackError, match="nothing earlier than deployment #2"):
        registry.rollback("helpdesk")  # the base model is as far back as it goes
    again = registry.rollback("helpdesk", to=str(d1.seq))  # forward again, explicitly
    assert again.stack.id == d1.stack.id and registry.get(a1).status == "live"
