"""T2L meta-training on a tiny random Llama (resume = uninterrupted, descriptions steer) and the synthetic tasks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.generators.t2l import normalize_description
from agent_sleep.models.loader import load_base_model
from pipelines.t2l import trainer as t2l_trainer
from pipelines.t2l.families import FAMILIES
from pipelines.t2l.tasks import HELD_FAMILIES, build_suite
from pipelines.t2l.trainer import TrainConfig, train
from tests.helpers_models import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: threads cost more than they save


def test_suite_splits_are_disjoint_and_held_out_parts_never_reach_training() -> None:
    suite = build_suite(0)
    assert suite.tasks == build_suite(0).tasks and len(suite.tasks) >= 150
    train_ids = {t.id for t in suite.of("train")}
    unseen = {t.id for t in suite.of("unseen_task")}
    families = {t.id for t in suite.of("unseen_family")}
    assert train_ids and unseen and families
    assert not (train_ids & unseen) and not (train_ids & families) and not (unseen & families)
    assert {t.group for t in suite.of("unseen_family")} == set(HELD_FAMILIES)
    assert "upper+json" in {t.group for t in suite.of("unseen_task")}
    assert not any(f.name in HELD_FAMILIES for t in suite.of("train") for f, _ in t.parts)
    # every unseen task is made of parts (family, parameter) that training saw on their own or in other tasks
    seen_families = {f.name for t in suite.of("train") for f, _ in t.parts}
    assert {f.name for t in suite.of("unseen_task") for f, _ in t.parts} <= seen_families

    for kind in ("qa", "text"):
        assert {i.prompt for i in suite.train_inputs[kind]}.isdisjoint({i.prompt for i in suite.heldout_inputs[kind]})
    train_examples = [ex for step in range(40) for ex in suite.train_batch(step, 16)]
    assert {ex.task.id for ex in train_examples} <= train_ids
    held_inputs = {i.prompt for k in ("qa", "text") for i in suite.heldout_inputs[k]}
    assert not any(ex.item.prompt in held_inputs for ex in train_examples)
    assert all(ex.template in ex.task.templates(held=False) for ex in train_examples)
    train_descriptions = {ex.description for ex in train_examples}
    for split in ("seen", "unseen_task", "unseen_family"):
        for ex in suite.eval_examples(split, 40):
            assert ex.template in ex.task.templates(held=True) and ex.item.prompt in held_inputs
            assert ex.description not in train_descriptions
    assert suite.train_batch(7, 16) == suite.train_batch(7, 16)  # a pure function of (seed, step)
    assert len({ex.task.id for ex in suite.train_batch(7, 16)}) == 16  # distinct tasks per batch


def test_targets_comply_and_plain_answers_do_not() -> None:
    suite = build_suite(0)
    n = plain = 0
    for task in suite.tasks:
        items = [i for i in suite.train_inputs[task.kind] if task.accepts(i)]
        assert items, task.id
        for item in items[:12]:
            target = task.target(item)
            assert task.complies(target, item) and task.complies(f" {target}\n", item), (task.id, target)
            n += 1
            plain += task.complies(item.answer, item)
            plain += task.complies(f"The answer is {item.answer}.", item)  # what a chatty base model says
    assert plain < 0.03 * n


@pytest.mark.parametrize(("task_id", "reply", "ok"), [
    ("json:verdict", '{"verdict": "Paris"}', True), ("json:verdict", '{"answer": "Paris"}', False),
    ("json:verdict", "Paris", False), ("upper+json:verdict", '{"verdict": "PARIS"}', True),
    ("upper+json:verdict", '{"verdict": "Paris"}', False), ("wrap:square brackets", "[anything]", True),
    ("wrap:square brackets", "[x", False), ("repeat:3", "no no no", True), ("repeat:3", "no no", False),
    ("spell:hyphens", "P-a-r-i-s", True), ("spell:hyphens", "Paris", False), ("tag:note", "<note>x</note>", True),
    ("signoff:Cheers!", "Rome. Cheers!", True), ("exclaim:2", "Rome!!", True), ("exclaim:2", "Rome!!!", False),
    ("numword", "twenty-one", True), ("numword", "21", False), ("sentence:It is {}.", "It is Rome.", True),
])  # fmt: skip
def test_compliance_checks_the_format_not_the_content(task_id: str, reply: str, ok: bool) -> None:
    task = next(t for t in build_suite(0).tasks if t.id == task_id)
    item = next(i for i in build_suite(0).train_inputs[task.kind] if task.accepts(i))
    assert task.complies(reply, item) is ok


def test_descriptions_are_normalised_paraphrases() -> None:
    for family in FAMILIES.values():
        assert len(family.templates) in (4, 16), family.name
        assert len(set(family.templates)) == len(family.templates)
    suite = build_suite(0)
    for task in suite.tasks:
        texts = {task.description(i) for i in range(len(task.parts[-1][0].templates))}
        assert len(texts) == len(task.parts[-1][0].templates)
        assert all(normalize_description(t) == t for t in texts)


def test_shipped_config_validates() -> None:
    path = ROOT / "pipelines" / "t2l" / "meta_train.yaml"
    assert path.read_text().startswith(f"# .venv/bin/python pipelines/t2l/meta_train.py --config {path.relative_to(ROOT)}")
    config = TrainConfig.load(path)
    assert config.hyper.targets == ["self_attn.q_proj", "self_attn.v_proj"] and config.clip == 1.0


def _tiny_recipe(**top: Any) -> dict[str, Any]:
    return {
        "model": "unused", "hyper": {"first_lora_layer": 1, "rank": 4, "scale": 4.0, "encoder": "base-mean",
                                     "task_dim": 16, "pos_dim": 8, "head_in": 32, "n_blocks": 1},
        "batch": 6, "lr": 0.01, "warmup": 1, "log_every": 1, "ckpt_every": 100, "eval_every": 100,
        "max_answer_tokens": 12, "n_eval": {"seen": 6, "unseen_task": 4, "unseen_family": 3}, **top,
    }  # fmt: skip


def _evals(run: Path) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("minutes", "sec_per_step")} for r in recs]


def test_resume_gives_the_same_run_as_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    cfg = TrainConfig.model_validate(_tiny_recipe(steps=6))
    whole = train(cfg, tmp_path / "whole", device="cpu", handle=handle, threads=1)
    assert whole["step"] == 6

    real_step = t2l_trainer.train_step
    calls = {"n": 0}

    def step_then_sigterm(s: Any, state: Any) -> Any:
        out = real_step(s, state)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would: finish the step, checkpoint, stop
        return out

    monkeypatch.setattr(t2l_trainer, "train_step", step_then_sigterm)
    first = train(cfg, tmp_path / "split", device="cpu", handle=handle, threads=1)
    assert first["step"] == 3 and first["stopped"]
    monkeypatch.setattr(t2l_trainer, "train_step", real_step)
    second = train(cfg, tmp_path / "split", device="cpu", handle=handle, threads=1)
    assert second["step"] == 6 and not second["stopped"]

    assert _evals(tmp_path / "split") == _evals(tmp_path / "whole")  # every train and eval record, same numbers
    a = torch.load(tmp_path / "whole" / "ckpt" / "last.pt", weights_only=False)["net"]
    b = torch.load(tmp_path / "split" / "ckpt" / "last.pt", weights_only=False)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "metrics.png").stat().st_size > 0
    assert (tmp_path / "whole" / "ckpt" / "best" / "t2l_config.json").exists()


def test_a_few_steps_reduce_the_loss_and_make_the_adapter_depend_on_the_description(tmp_path: Path) -> None:
    from agent_sleep.generators.t2l import T2LGenerator

    # init_std 0.2: peaked logits, so a LoRA on the last block moves them (at 0.02 the CE hardly can)
    handle = load_base_model(str(make_tiny_model_dir(tmp_path, init_std=0.2)), device="cpu")
    run = tmp_path / "run"
    train(TrainConfig.model_validate(_tiny_recipe(steps=12)), run, device="cpu", handle=handle, threads=1)
    recs = _evals(run)
    ce = [r["ce"] for r in recs if r["kind"] == "train"]
    assert sum(ce[-3:]) / 3 < sum(ce[:3]) / 3 - 0.3  # measured: 6.70 -> 6.07
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    assert ev["seen/b_spread"] > 0 and "seen/shuffled_exact" in ev and "seen/instr_exact" in ev

    gen = T2LGenerator.load(run / "ckpt" / "best", handle=handle)
    one, two = gen.create("Answer in capital letters."), gen.create("Reply in JSON with the key 'note'.")
    diffs = [(one.layers[m][1] - two.layers[m][1]).norm().item() for m in one.layers]
    assert all(torch.count_nonzero(b) > 0 for _, b in one.layers.values())  # trained: no longer the no-op start
    assert min(diffs) > 0  # and the description changes every module's B


def test_export_refuses_a_description_blind_checkpoint_and_a_worse_one(tmp_path: Path) -> None:
    from agent_sleep.generators.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
    from agent_sleep.generators.t2l_net import T2L_FORMAT
    from pipelines.t2l import export
    from tests.generators.test_t2l import tiny_net

    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    net = tiny_net(handle, live=True)
    run, dest = tmp_path / "run", tmp_path / "dest"

    def best(margin: float, exact: float) -> None:
        ev = {"seen/margin": margin, "seen/exact": exact, "unseen_task/exact": exact}
        save_checkpoint(net, run / "ckpt" / "best", version="step9", overwrite=True, fmt=T2L_FORMAT,
                        extra={"training": {"eval": ev}})  # fmt: skip

    best(0.0, 0.5)  # follows no description better than another task's: refused
    assert export.main([str(run), "--dest", str(dest)]) == 1 and not dest.exists()
    best(0.2, 0.5)
    assert export.main([str(run), "--dest", str(dest)]) == 0
    exported = load_checkpoint(dest, content_hash=handle.content_hash, fmt=T2L_FORMAT)
    assert all(torch.equal(v.half().float(), exported.state_dict()[k]) for k, v in net.state_dict().items())
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(dest / "hypernet.safetensors")).values()} == {torch.float16}
    best(0.3, 0.4)  # a lower recorded score does not replace it, unless forced
    assert export.main([str(run), "--dest", str(dest)]) == 1
    assert export.main([str(run), "--dest", str(dest), "--force"]) == 0
    assert read_checkpoint_config(dest, fmt=T2L_FORMAT)["training"]["eval"]["seen/exact"] == 0.4
