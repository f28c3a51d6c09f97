"""Deploys must not go wrong: weights, the stack as it runs, policy-bound rejections, approve/retire,
validated rollback, no orphan stacks, a follower that refuses a switch once, a clean exit while watching.

Driven through the CLI (``agent_sleep.cli.main:main``) and the LiveRuntime, on a tiny random model.
Adapter sizes (||ΔW||/||W|| of the worst layer): std 0.05 gives about 0.55, std 0.1 about 2.2.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import DeploymentError, InvalidInputError, NotFoundError
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from agent_sleep.models.loader import load_base_model

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return folder, load_base_model(str(folder))


@pytest.fixture
def registry(tiny: tuple[Path, Any], settings: Settings, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> AdapterRegistry:
    """refunds (0.55) and tone (0.54) pass alone and together; twin is refunds again (twice 0.55 fails);
    big (2.2) passes only a loose limit."""
    folder, handle = tiny
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(folder))  # what the CLI validates against
    registry = AdapterRegistry(ExperienceStore(settings=settings.model_copy(update={"model": str(folder)})))
    for skill, seed, std in (("refunds", 1, 0.05), ("tone", 2, 0.05), ("twin", 1, 0.05), ("big", 3, 0.1)):
        registry.register(write_random(tmp_path / f"src-{skill}", handle, seed=seed, std=std), skill)
    return registry


@pytest.fixture
def cli(registry: AdapterRegistry, settings: Settings, capsys: pytest.CaptureFixture[str]) -> Cli:
    from agent_sleep.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--data-dir", str(settings.data_dir), "--db", registry.store.url, *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def runtime(registry: AdapterRegistry, tiny: tuple[Path, Any]) -> Any:
    from agent_sleep.runtime.live import LiveRuntime

    with LiveRuntime(registry, handle=tiny[1]) as rt:
        yield rt


def _tamper(registry: AdapterRegistry, ref: str) -> None:
    with (Path(registry.get(ref).path) / "adapter_model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")


def test_weights_must_be_finite_and_sane(cli: Cli, registry: AdapterRegistry, runtime: Any) -> None:
    for bad in ("nan", "inf", "1e6", "0", "-5", "x"):
        code, _, err = cli("deploy", "refunds@v1", "--weight", f"refunds={bad}", "--agent", "helpdesk")
        assert code == 2 and ("0 < |weight| <= 4" in err or "must be a number" in err), (bad, err)  # bad usage
    code, _, err = cli("deploy", "refunds@v1", "--weight", "tone=0.5", "--agent", "helpdesk")
    assert code == 1 and "not among the adapters" in err
    assert registry.live("helpdesk") is None and registry.stacks() == []
    # The API refuses what the CLI refuses.
    with pytest.raises(InvalidInputError, match="weight of 'refunds@v1'"):
        runtime.deploy("helpdesk", [("refunds@v1", float("nan"))])
    with pytest.raises(InvalidInputError, match="weight of 'refunds@v1'"):
        runtime.chat_model(adapters=[("refunds@v1", 1e6)])
    assert registry.live("helpdesk") is None and registry.stacks() == []
    code, out, _ = cli("deploy", "refunds@v1", "--weight", "refunds=-0.5", "--agent", "helpdesk", "--json")
    assert code == 0 and json.loads(out)["deployment"]["stack"]["items"] == [{"adapter": "refunds@v1", "weight": -0.5}]


def test_the_stack_is_checked_as_it_will_run(cli: Cli, registry: AdapterRegistry, tiny: tuple[Path, Any]) -> None:
    # Each adapter passes alone at weight 1, but at weight 3, or twice over, the layer's change is too large.
    for args in (["refunds@v1", "--weight", "refunds=3"], ["refunds@v1", "twin@v1"]):
        code, out, _ = cli("deploy", *args, "--agent", "helpdesk", "--json")
        outcome = json.loads(out)
        assert code == 3 and outcome["status"] == "rejected" and "stack: stack_delta_norm" in outcome["reason"]
        assert all(v["ok"] for v in outcome["verdicts"])
    assert registry.live("helpdesk") is None
    assert registry.stacks() == []  # rejected deploys leave no stack behind
    assert {registry.get(s).status for s in ("refunds@v1", "twin@v1")} == {"approved"}  # the mix failed, not them

    code, out, _ = cli("deploy", "refunds@v1", "tone@v1", "--agent", "helpdesk", "--json")
    assert code == 0 and json.loads(out)["stack_checks"][-1]["value"] < 1.0
    # The exact merge of the live stack is the stack as it runs: it passes the limit its parts passed ...
    code, out, _ = cli("stacks", "merge", "helpdesk:stack@v1", "--name", "merged", "--json")
    assert code == 0 and json.loads(out)["name"] == "merged@v1"
    assert cli("deploy", "merged@v1", "--agent", "one-adapter-server")[0] == 0
    # ... and a merge of a stack too large as a whole is refused before it is registered.
    registry.create_stack("lab", ["refunds@v1", "twin@v1"])
    code, out, _ = cli("stacks", "merge", "lab:stack@v1", "--name", "toolarge")
    assert code == 3 and "delta_norm" in out and "nothing registered" in out
    with pytest.raises(NotFoundError):
        registry.get("toolarge")


def test_a_rejection_belongs_to_the_policy_that_made_it(cli: Cli, registry: AdapterRegistry, runtime: Any) -> None:
    code, out, _ = cli("deploy", "refunds@v1", "--max-delta-norm", "0.1", "--agent", "helpdesk")
    assert code == 3 and "delta_norm" in out
    rec = registry.get("refunds@v1")
    assert rec.status == "rejected" and rec.aliases == ()
    assert rec.rejection is not None and (rec.rejection.check, rec.rejection.kind) == ("delta_norm", "policy")
    assert rec.rejection.policy == {"max_delta_norm": 0.1}
    # Never served through an alias, nor by name.
    for ref in ("refunds@candidate", "refunds"):
        with pytest.raises(NotFoundError):
            runtime.chat_model(adapters=[ref])
    with pytest.raises(InvalidInputError, match="refunds@v1 is rejected"):
        runtime.chat_model(adapters=["refunds@v1"])
    code, _, err = cli("ask", "hi", "--adapter", "refunds@candidate", "--max-new-tokens", "2")
    assert code == 1 and "refunds@candidate" in err

    code, out, _ = cli("deploy", "refunds@v1", "--max-delta-norm", "0.05", "--agent", "helpdesk")
    assert code == 3 and "rejected earlier" in out  # stricter: no need to look again
    code, out, _ = cli("deploy", "refunds@v1", "--agent", "helpdesk")  # the default limit, 1.0: validated again
    assert code == 0, out
    assert registry.get("refunds@v1").status == "live" and registry.get("refunds@live").name == "refunds@v1"
    assert [c.to_status for c in registry.status_history("refunds@v1")] == ["rejected", "approved", "live"]
    # A stricter deploy elsewhere is refused, but does not demote what is live under its own policy.
    code, _, _ = cli("deploy", "refunds@v1", "--max-delta-norm", "0.1", "--agent", "sales")
    assert code == 3 and registry.get("refunds@v1").status == "live"


def test_approve_and_retire(cli: Cli, registry: AdapterRegistry) -> None:
    assert cli("deploy", "big@v1", "--agent", "helpdesk")[0] == 3  # 2.2 > 1.0
    code, out, _ = cli("adapters", "approve", "big@v1", "--reason", "reviewed", "--json")
    assert code == 0 and json.loads(out)["status"] == "approved"
    assert cli("deploy", "big@v1", "--agent", "helpdesk")[0] == 3  # approval is not a pass: deploys validate
    assert cli("deploy", "big@v1", "--agent", "helpdesk", "--max-delta-norm", "5")[0] == 0
    code, _, err = cli("adapters", "retire", "big@v1")
    assert code == 1 and "is live for helpdesk" in err

    code, out, _ = cli("adapters", "retire", "tone@v1", "--actor", "ops")
    assert code == 0 and out.strip() == "tone@v1 is retired: retired by ops"
    assert registry.get("tone@v1").aliases == ()

    _tamper(registry, "twin@v1")
    code, out, _ = cli("deploy", "twin@v1", "--agent", "helpdesk", "--max-delta-norm", "5")
    assert code == 3 and "modified after it was written" in out
    assert registry.get("twin@v1").rejection.kind == "integrity"  # type: ignore[union-attr]
    code, out, _ = cli("deploy", "twin@v1", "--agent", "helpdesk", "--max-delta-norm", "1000")
    assert code == 3 and "rejected earlier" in out  # no limit makes a tampered file good
    code, _, err = cli("adapters", "approve", "twin@v1")
    assert code == 1 and "integrity" in err
    code, out, _ = cli("deploy", "twin@v1", "--agent", "helpdesk", "--no-validate")
    assert code == 3 and "does not lift a rejection" in out
    assert registry.live("helpdesk").stack.items[0].adapter == "big@v1"  # type: ignore[union-attr]


def test_rollback_validates_like_deploy(cli: Cli, registry: AdapterRegistry, runtime: Any) -> None:
    assert cli("deploy", "refunds@v1", "--agent", "helpdesk")[0] == 0
    assert cli("deploy", "tone@v1", "--agent", "helpdesk")[0] == 0
    _tamper(registry, "refunds@v1")
    code, out, _ = cli("rollback", "--agent", "helpdesk", "--json")
    outcome = json.loads(out)
    assert code == 3 and outcome["status"] == "rejected" and "modified after it was written" in outcome["reason"]
    live = registry.live("helpdesk")
    assert live is not None and live.seq == 2 and live.stack.items[0].adapter == "tone@v1"  # nothing changed
    rec = registry.get("refunds@v1")
    assert rec.status == "rejected" and rec.aliases == ()  # registry and servers agree: not live
    assert cli("rollback", "--agent", "helpdesk")[0] == 3
    with pytest.raises(DeploymentError, match="rejected"):
        registry.rollback("helpdesk")
    assert runtime.rollback("helpdesk").status == "rejected"
    assert registry.live("helpdesk").seq == 2  # type: ignore[union-attr]


def test_a_refused_switch_is_said_once_then_retried_later(cli: Cli, registry: AdapterRegistry, runtime: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    runtime.deploy("helpdesk", "refunds@v1")
    caplog.set_level(logging.DEBUG, logger="agent_sleep.runtime")
    runtime.watch(interval=0.02)
    # Deployed under a looser limit than this runtime's (1.0): the runtime keeps what it serves.
    assert cli("deploy", "big@v1", "--agent", "helpdesk", "--max-delta-norm", "5")[0] == 0

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "switching helpdesk" in r.getMessage()]

    deadline = time.monotonic() + 30
    while not said() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # some 50 polls
    assert len(said()) == 1 and said()[0].levelno == logging.ERROR
    assert runtime.live("helpdesk").deployment.seq == 1
    refusal = runtime.refusal("helpdesk")
    assert refusal is not None and refusal.deployment.seq == 2 and "delta_norm" in refusal.reason
    assert refusal.attempts == 1 and refusal.retry_at > time.monotonic()
    # A newer deployment is tried at once.
    assert cli("deploy", "tone@v1", "--agent", "helpdesk")[0] == 0
    assert runtime.wait_for("helpdesk", 3, timeout=30)
    assert runtime.refusal("helpdesk") is None


def test_with_block_stops_the_watcher(registry: AdapterRegistry, tiny: tuple[Path, Any]) -> None:
    from agent_sleep.runtime.live import LiveRuntime

    def watchers() -> int:
        return sum(t.name == "agent-sleep-runtime-watch" and t.is_alive() for t in threading.enumerate())

    before = watchers()
    with LiveRuntime(registry, handle=tiny[1]) as rt:
        rt.watch(interval=0.02)
        assert watchers() == before + 1
    assert watchers() == before


_WATCH_AND_EXIT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agent_sleep.config import Settings
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore
    from tests.helpers_adapters import write_random

    model, data, url = sys.argv[1:4]
    registry = AdapterRegistry(ExperienceStore(settings=Settings(data_dir=data, database_url=url, model=model)))
    runtime = LiveRuntime(registry)
    for i in range(16):  # deployments the watcher validates (in torch) right when the process ends
        registry.register(write_random(Path(data) / f"src{i}", runtime.handle, seed=i), f"skill{i}")
        registry.deploy(f"agent{i}", f"skill{i}@v1")
    runtime.watch(interval=0.01)
    time.sleep(0.1)
    print("leaving without stop()")
""")


def test_exit_while_watching_is_clean(registry: AdapterRegistry, tiny: tuple[Path, Any], settings: Settings) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _WATCH_AND_EXIT, str(tiny[0]), str(settings.data_dir / "exit"),
                           registry.store.url], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaving without stop()" in done.stdout


def test_returning_to_a_validated_stack_reuses_its_verdict(registry: AdapterRegistry, runtime: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A long-lived runtime checks each whole stack once per (versions, weights, base model, limit): a rollback to
    # a stack it already validated costs the status checks and the SQL write, not a second validation.
    from agent_sleep.adapters import validation

    calls: list[list[str]] = []
    real = validation.validate_stack

    def counting(items: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append([name for name, _, _ in items])
        return real(items, *args, **kwargs)

    monkeypatch.setattr(validation, "validate_stack", counting)
    assert runtime.deploy("helpdesk", ["refunds@v1"]).status == "deployed"
    assert runtime.deploy("helpdesk", ["refunds@v1", ("tone@v1", 0.5)]).status == "deployed"
    assert runtime.rollback("helpdesk").status == "deployed"
    assert runtime.deploy("helpdesk", ["refunds@v1", ("tone@v1", 0.25)]).status == "deployed"  # another weight
    assert calls == [["refunds@v1"], ["refunds@v1", "tone@v1"], ["refunds@v1", "tone@v1"]]
    assert registry.live("helpdesk").stack.items[1].weight == 0.25  # type: ignore[union-attr]


def test_a_deploy_conditioned_on_a_deployment_that_is_no_longer_live_changes_nothing(
        registry: AdapterRegistry, runtime: Any) -> None:  # fmt: skip
    from agent_sleep.errors import DeployConflictError

    first = runtime.deploy("helpdesk", ["refunds@v1"], expected_seq=0)
    assert first.status == "deployed" and first.deployment.seq == 1
    with pytest.raises(DeployConflictError, match="expected #0"):  # someone deployed #1 since we looked
        runtime.deploy("helpdesk", ["tone@v1"], expected_seq=0)
    live = registry.live("helpdesk")
    assert live is not None and live.seq == 1 and [i.adapter for i in live.stack.items] == ["refunds@v1"]
    assert runtime.deploy("helpdesk", ["tone@v1"], expected_seq=1).deployment.seq == 2


@pytest.mark.parametrize("interloper_run", ["run-1", "run-other"])
def test_the_deploy_stage_loses_a_race_as_data_and_keeps_its_own_deployment(
        registry: AdapterRegistry, runtime: Any, interloper_run: str) -> None:  # fmt: skip
    """A deploy lands between the stage's check and its write: by a second holder of this run (lease expired and
    taken over) the stage's result is that deployment; by anyone else it is a conflict. Nothing is deployed twice."""
    from types import SimpleNamespace

    from agent_sleep.consolidation import deployment

    class Racing:  # the other process deploys just before ours writes
        registry = runtime.registry

        def deploy(self, agent: str, target: Any, **kw: Any) -> Any:
            runtime.deploy(agent, target, actor="consolidation", run_id=interloper_run)
            return runtime.deploy(agent, target, **kw)

    ctx = SimpleNamespace(agent="helpdesk", run_id="run-1", registry=registry, runtime=Racing(), say=lambda _: None)
    evaluated = {"incumbent": {"seq": 0, "skills": []}, "accepted": [["refunds@v1", 1.0]]}
    result = deployment.deploy(ctx, evaluated)  # type: ignore[arg-type]
    deps = registry.deployments("helpdesk")
    assert len(deps) == 1 and deps[0].run_id == interloper_run  # ours was refused, not stacked on top
    if interloper_run == "run-1":
        assert result == {"deployed": True, "stack": deps[0].stack.name, "seq": 1, "deployment_id": deps[0].id}
    else:
        assert result["deployed"] is False and "expected #0" in result["conflict"]
