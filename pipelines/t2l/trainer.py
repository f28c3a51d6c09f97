"""The T2L meta-training recipe (SFT mode): config, setup, baselines, held-out eval, checkpoints, the step loop.

``meta_train.py`` is its command line; the loss and the measures live in :mod:`pipelines.t2l.objective`, the tasks
in :mod:`pipelines.t2l.tasks`. Each step draws ``batch`` training examples of distinct tasks, generates one LoRA
per example from its description's (cached) embedding, and minimises the answer-token CE of the base model under
those LoRAs, without the instruction in the prompt, plus ``l2`` x the mean square of the generated A and B.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from agent_sleep.generators.backbone import RowLora
from agent_sleep.generators.checkpoint import save_checkpoint
from agent_sleep.generators.t2l import embed_descriptions
from agent_sleep.generators.t2l_net import T2L_FORMAT, T2LConfig, T2LNet
from pipelines.d2l.data import cache_key
from pipelines.t2l.objective import answer_scores, l2_penalty
from pipelines.t2l.tasks import Example, Suite, build_suite, shuffle_shift
from pipelines.training import StepLog, StopSignals, append_jsonl, lr_factor, run_loop

__all__ = ["SPLITS", "HyperSettings", "TrainConfig", "train"]

SPLITS = ("seen", "unseen_task", "unseen_family")  # seen = training tasks, held-out paraphrases and inputs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HyperSettings(_Strict):
    """The hypernetwork's shape (T2LConfig's settings; the base model fixes the rest)."""

    targets: list[str] = ["self_attn.q_proj", "self_attn.v_proj"]
    first_lora_layer: int = 15
    rank: int = 8
    scale: float = 2.0
    encoder: Literal["all-minilm-l6-v2", "base-mean"] = "all-minilm-l6-v2"
    task_dim: int = 64
    pos_dim: int = 32
    head_in: int = 256
    n_blocks: int = 2


class TrainConfig(_Strict):
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    heldout_share: float = 0.15
    hyper: HyperSettings = HyperSettings()
    steps: int = 900
    batch: int = 16
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup: int = 45
    weight_decay: float = 0.01
    clip: float = 1.0
    l2: float = 1e-3
    max_answer_tokens: int = 48
    n_eval: dict[str, int] = {"seen": 96, "unseen_task": 72, "unseen_family": 34}
    log_every: int = 5
    ckpt_every: int = 20
    eval_every: int = 100
    threads: int = 1

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


# ---------------------------------------------------------------- setup


@dataclass
class Setup:
    """What training does not change: the frozen base model (with row-LoRA hooks), the network's shape, the tasks,
    every description's embedding and the fixed evaluation examples."""

    cfg: TrainConfig
    run_dir: Path
    device: str
    handle: Any
    hc: T2LConfig
    lora: RowLora
    suite: Suite
    emb: Tensor  # [D, E], row of description text ``index[text]``
    index: dict[str, int]
    evals: dict[str, list[Example]]

    def embed(self, examples: list[Example], *, shift: int = 0) -> Tensor:
        """Embeddings of the examples' descriptions; ``shift``: of example ``(i + shift) % n`` instead (shuffled)."""
        n = len(examples)
        return self.emb[[self.index[examples[(i + shift) % n].description] for i in range(n)]].to(self.device)


def hyper_config(cfg: TrainConfig, handle: Any) -> T2LConfig:
    hs = cfg.hyper
    n_layers = int(handle.model.config.num_hidden_layers)
    emb_dim = 384 if hs.encoder == "all-minilm-l6-v2" else int(handle.model.config.hidden_size)
    return T2LConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                               layers=list(range(hs.first_lora_layer, n_layers)), emb_dim=emb_dim,
                               **hs.model_dump(exclude={"first_lora_layer"}))  # fmt: skip


def setup(cfg: TrainConfig, run_dir: Path, *, device: str | None, threads: int | None, command: str,
          handle: Any) -> Setup:  # fmt: skip
    """Seed, load the base model (unless ``handle``), record the config, embed every description once (cached)."""
    from agent_sleep.models.loader import load_base_model

    torch.set_num_threads(threads or cfg.threads)
    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = Path(run_dir)
    (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
    handle = handle or load_base_model(cfg.model, device=device, dtype=torch.float32)
    handle.model.requires_grad_(False)
    hc = hyper_config(cfg, handle)
    (run_dir / "config.json").write_text(json.dumps({"train": cfg.model_dump(mode="json"), "command": command},
                                                    indent=2))  # fmt: skip
    suite = build_suite(cfg.seed, cfg.heldout_share)
    texts = sorted({t.description(i) for t in suite.tasks for i in range(len(t.parts[-1][0].templates))})
    cache = run_dir / "cache" / f"desc-{cache_key(enc=hc.encoder, model=handle.content_hash, texts=texts)}.pt"
    if cache.exists():
        emb = torch.load(cache)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        emb = embed_descriptions(hc.encoder, texts, handle)
        torch.save(emb, cache)
    evals = {split: suite.eval_examples(split, cfg.n_eval[split]) for split in SPLITS if cfg.n_eval.get(split)}
    evals = {k: v for k, v in evals.items() if v}
    return Setup(cfg=cfg, run_dir=run_dir, device=device, handle=handle, hc=hc,
                 lora=RowLora(handle.model, hc.module_names()), suite=suite, emb=emb.float(),
                 index={t: i for i, t in enumerate(texts)}, evals=evals)  # fmt: skip


def _scores(s: Setup, examples: list[Example], weights: Any, *, with_instruction: bool = False,
            chunk: int = 32) -> tuple[float, float]:  # fmt: skip
    """(exact-match share, mean CE) over ``examples`` (teacher-forced, in chunks; ``weights`` rows follow examples)."""
    exact, ce = [], []
    with torch.no_grad():
        for lo in range(0, len(examples), chunk):
            w = None if weights is None else {k: (a[lo : lo + chunk], b[lo : lo + chunk]) for k, (a, b) in
                                              weights.items()}  # fmt: skip
            c, e = answer_scores(s.handle.model, s.handle.tokenizer, s.lora, s.hc, examples[lo : lo + chunk], w,
                                 s.device, with_instruction=with_instruction,
                                 max_answer_tokens=s.cfg.max_answer_tokens)  # fmt: skip
            exact.append(e.float())
            ce.append(c)
    return torch.cat(exact).mean().item(), torch.cat(ce).mean().item()


def baselines(s: Setup) -> dict[str, Any]:
    """The base model on each eval split, without and with the instruction in the prompt (``baseline.json``, once)."""
    path = s.run_dir / "baseline.json"
    if path.exists():
        return json.loads(path.read_text())
    out: dict[str, Any] = {}
    for split, examples in s.evals.items():
        out[f"{split}/base_exact"], out[f"{split}/base_ce"] = _scores(s, examples, None)
        out[f"{split}/instr_exact"], out[f"{split}/instr_ce"] = _scores(s, examples, None, with_instruction=True)
    path.write_text(json.dumps(out, indent=2))
    return out


# ---------------------------------------------------------------- state and checkpoints


@dataclass
class TrainState:
    net: T2LNet
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    best: float = -1.0
    trained_s: float = 0.0


def fresh_state(s: Setup) -> TrainState:
    cfg = s.cfg
    net = T2LNet(s.hc).to(s.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, warmup=cfg.warmup, steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr))
    return TrainState(net, opt, sched)


def _last(run_dir: Path) -> Path:
    return run_dir / "ckpt" / "last.pt"


def resume(state: TrainState, s: Setup) -> None:
    """Continue from ``ckpt/last.pt`` if the run has one."""
    last = _last(s.run_dir)
    if last.exists():
        saved = torch.load(last, weights_only=False, map_location=s.device)
        state.net.load_state_dict(saved["net"])
        state.opt.load_state_dict(saved["opt"])
        state.sched.load_state_dict(saved["sched"])
        state.step, state.best, state.trained_s = saved["step"], saved["best"], saved["trained_s"]


def save_last(state: TrainState, s: Setup) -> None:
    """Write ``ckpt/last.pt`` atomically (a kill mid-write leaves the previous one)."""
    last = _last(s.run_dir)
    tmp = last.with_suffix(f".tmp{os.getpid()}")
    torch.save({"net": state.net.state_dict(), "opt": state.opt.state_dict(), "sched": state.sched.state_dict(),
                "step": state.step, "best": state.best, "trained_s": state.trained_s}, tmp)  # fmt: skip
    os.replace(tmp, last)


def save_best(state: TrainState, s: Setup, rec: dict[str, Any], command: str) -> None:
    """Write ``ckpt/best`` (a loadable T2L checkpoint) with the eval record that made it the best."""
    save_checkpoint(state.net, s.run_dir / "ckpt" / "best", version=f"step{state.step}", overwrite=True,
                    fmt=T2L_FORMAT, extra={"training": {"step": state.step, "minutes": state.trained_s / 60,
                                                        "command": command, "config": s.cfg.model_dump(mode="json"),
                                                        "eval": {k: v for k, v in rec.items() if "/" in k}}})  # fmt: skip


# ---------------------------------------------------------------- eval and step


def evaluate(s: Setup, state: TrainState, baseline: dict[str, Any]) -> dict[str, Any]:
    """The ``eval`` record: per split, exact match and CE with each example's own description's adapter and with
    another task's (the shuffled control; margin = own - shuffled), the base model's, and the spread of the
    generated B across descriptions (near 0 = a description-independent, collapsed hypernetwork)."""
    state.net.eval()
    rec: dict[str, Any] = {"kind": "eval", "step": state.step, "minutes": state.trained_s / 60}
    with torch.no_grad():
        for split, examples in s.evals.items():
            own = state.net(s.embed(examples))
            rec[f"{split}/exact"], rec[f"{split}/ce"] = _scores(s, examples, own)
            shuffled = state.net(s.embed(examples, shift=shuffle_shift(examples)))
            rec[f"{split}/shuffled_exact"], rec[f"{split}/shuffled_ce"] = _scores(s, examples, shuffled)
            rec[f"{split}/margin"] = rec[f"{split}/exact"] - rec[f"{split}/shuffled_exact"]
            b = torch.cat([bb.flatten(1) for _, bb in own.values()], dim=1)
            rec[f"{split}/b_spread"] = ((b - b.mean(0)).norm(dim=1).mean() / b.mean(0).norm().clamp_min(1e-8)).item()
    state.net.train()
    rec.update(baseline)
    return rec


def _score(rec: dict[str, Any]) -> float:
    """What ``ckpt/best`` maximises: exact match on seen tasks (held-out paraphrases) and on unseen tasks."""
    keys = [k for k in ("seen/exact", "unseen_task/exact") if k in rec]
    return sum(rec[k] for k in keys) / max(1, len(keys))


def train_step(s: Setup, state: TrainState) -> tuple[float, float, float]:
    """One optimiser step on batch ``state.step``; returns (CE, L2 penalty, gradient norm before clipping).
    FloatingPointError on a non-finite loss, before the weights change."""
    cfg = s.cfg
    examples = s.suite.train_batch(state.step, cfg.batch)
    weights = state.net(s.embed(examples))
    ce, _ = answer_scores(s.handle.model, s.handle.tokenizer, s.lora, s.hc, examples, weights, s.device,
                          max_answer_tokens=cfg.max_answer_tokens)  # fmt: skip
    ce_mean = ce.mean()
    reg = l2_penalty(weights)
    loss = ce_mean + cfg.l2 * reg
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {state.step}; last checkpoint kept")
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(state.net.parameters(), cfg.clip).item()
    state.opt.step()
    state.sched.step()
    return ce_mean.item(), reg.item(), gnorm


def plot_metrics(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 1 + len(SPLITS), figsize=(5 * (1 + len(SPLITS)), 4))
    if tr:
        axes[0].plot([r["step"] for r in tr], [r["ce"] for r in tr], label="train CE (answer tokens)")
    for split, ax in zip(SPLITS, axes[1:], strict=True):
        if not ev or f"{split}/exact" not in ev[-1]:
            continue
        axes[0].plot([r["step"] for r in ev], [r[f"{split}/ce"] for r in ev], "o-", label=f"{split} CE")
        ax.plot([r["step"] for r in ev], [r[f"{split}/exact"] for r in ev], "o-", label="T2L, own description")
        ax.plot([r["step"] for r in ev], [r[f"{split}/shuffled_exact"] for r in ev], ".--",
                label="T2L, another task's description")  # fmt: skip
        ax.axhline(ev[-1][f"{split}/base_exact"], color="grey", ls="--", label="base, no instruction")
        ax.axhline(ev[-1][f"{split}/instr_exact"], color="green", ls=":", label="base, instruction in prompt")
        ax.set_title(split)
        ax.set_xlabel("step")
        ax.set_ylabel("exact match (teacher-forced = greedy)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------- the loop


def run_steps(s: Setup, state: TrainState, baseline: dict[str, Any], stop: StopSignals, *,
              max_minutes: float | None, command: str) -> None:  # fmt: skip
    """Train until ``cfg.steps``, a stop signal or ``max_minutes`` of training (:func:`pipelines.training.run_loop`);
    log, evaluate (keeping ``ckpt/best``) and checkpoint on the recipe's schedules."""
    cfg = s.cfg
    metrics = s.run_dir / "metrics.jsonl"

    def one_step() -> StepLog:
        ce, reg, gnorm = train_step(s, state)
        return StepLog(ce, last={"l2": reg, "grad_norm": gnorm, "lr": state.sched.get_last_lr()[0]})

    def evaluate_now(bar: Any) -> None:
        rec = evaluate(s, state, baseline)
        append_jsonl(metrics, rec)
        bar.write(f"step {state.step}: " + "; ".join(
            f"{sp} exact {rec[f'{sp}/exact']:.3f} (shuffled {rec[f'{sp}/shuffled_exact']:.3f}, base "
            f"{rec[f'{sp}/base_exact']:.3f}, instr {rec[f'{sp}/instr_exact']:.3f})" for sp in s.evals))
        if _score(rec) > state.best:
            state.best = _score(rec)
            save_best(state, s, rec, command)
        plot_metrics(metrics, s.run_dir / "metrics.png")

    state.net.train()
    run_loop(state, steps=cfg.steps, log_every=cfg.log_every, eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every,
             metrics=metrics, stop=stop, max_minutes=max_minutes, one_step=one_step, evaluate=evaluate_now,
             checkpoint=lambda: save_last(state, s), desc="t2l meta-train")  # fmt: skip


def train(cfg: TrainConfig, run_dir: Path, *, device: str | None = None, max_minutes: float | None = None,
          threads: int | None = None, command: str = "", handle: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) meta-training in ``run_dir``; returns a summary dict. ``handle``: a preloaded base model.

    ``ckpt/last.pt`` is written however the loop ends (steps done, ``max_minutes``, SIGTERM/SIGINT, an error).
    """
    s = setup(cfg, run_dir, device=device, threads=threads, command=command, handle=handle)
    try:
        baseline = baselines(s)
        state = fresh_state(s)
        resume(state, s)
        with StopSignals() as stop:
            try:
                run_steps(s, state, baseline, stop, command=command, max_minutes=max_minutes)
            finally:
                save_last(state, s)
    finally:
        s.lora.remove()
    return {"step": state.step, "best": state.best, "minutes": state.trained_s / 60, "stopped": stop.requested}
