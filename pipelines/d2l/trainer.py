"""The D2L meta-training recipe (config, loss, eval, checkpoints); ``meta_train.py`` is its command line."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from tqdm import tqdm

from agent_sleep.generators.backbone import RowLora, logits_at, run_blocks
from agent_sleep.generators.checkpoint import save_checkpoint
from agent_sleep.generators.hypernet import HyperConfig, HyperNet, HyperOutput
from agent_sleep.generators.prompts import question_prompt
from pipelines.d2l import prose, synth
from pipelines.d2l.data import CachedDoc, build_cache, cache_key, pad_right

__all__ = ["TrainConfig", "train"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    n_train: int = 800
    n_eval: int = 48
    n_facts: tuple[int, int] = (1, 3)
    n_filler: tuple[int, int] = (0, 2)
    vocab_size: int | None = 16
    attributes: list[str] = list(synth.ATTRIBUTES)
    max_doc_tokens: int = 128
    use_probe_qa: bool = False
    chunk_probs: list[float] = [1.0]  # P(an adapter is built from K = 1, 2, ... documents, one chunk each)
    n_hay: int = 0  # filler-only documents (no questions) cached as distractor chunks
    p_hay: float = 0.0  # probability that an adapter also gets 1..max_hay distractor chunks
    max_hay: int = 1
    hay_sentences: tuple[int, int] = (2, 16)
    fact_hay: tuple[int, int] = (0, 0)  # haystack sentences mixed into each fact document (needle-like chunks)
    prose_share: float = 0.0  # share of training and eval documents that are prose-like (pipelines/d2l/prose.py)
    prose_facts: tuple[int, int] = (3, 6)


class HyperSettings(_Strict):
    rank: int = 8
    first_lora_layer: int = 14
    encoder_layers: int = 8
    target: str = "mlp.down_proj"
    latent_dim: int = 256
    n_latents: int = 32
    n_heads: int = 4
    n_blocks: int = 2
    scale: float = 2.0
    use_bias: bool = False
    standardize: bool = False
    scale_B_init: float = 0.0
    b_head: str = "mlp"
    a_head: str = "mlp"
    chunk_gate: bool = False


class TrainConfig(_Strict):
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    data: DataConfig = DataConfig()
    hyper: HyperSettings = HyperSettings()
    steps: int = 900
    docs_per_step: int = 8
    qas_per_doc: int = 2
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 20
    weight_decay: float = 0.01
    clip: float = 1.0
    l1: float = 1e-3
    log_every: int = 5
    ckpt_every: int = 25
    eval_every: int = 100
    eval_max_new_tokens: int = 8
    threads: int = 2
    # Auxiliary losses on what the synthetic data knows (copy head / chunk gate only). pointer_loss: every slot's
    # pointer should rest on the tokens of stated values, and every value token should get some slot (each digit
    # of a number included); gate_loss: binary cross-entropy of the chunk gate, 1 on fact documents, 0 on filler.
    pointer_loss: float = 0.0
    gate_loss: float = 0.0
    # Warm start: a D2L checkpoint folder (e.g. another run's ckpt/best) whose weights initialise the network; it
    # must have this recipe's shape. Only for a fresh run dir (a resumed run continues from its own state).
    init_from: str | None = None

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


# ---------------------------------------------------------------- loss and eval


def _chunk_loras(net: HyperNet, docs: list[CachedDoc], device: Any) -> HyperOutput:
    """One LoRA per cached document (one chunk each), without the bias block, with its pointer and gate."""
    feats, mask = pad_right([d["feats"].to(device, torch.float32) for d in docs])
    return net.explain(feats, mask.bool())


def aux_losses(out: HyperOutput, docs: list[CachedDoc], n_fact: int) -> tuple[Tensor, Tensor]:
    """(pointer loss, gate loss) for chunks ``docs`` whose first ``n_fact`` state facts and the rest are filler.

    Pointer: per fact document, -log of each slot's attention mass on the value tokens (focus) plus -log of the
    mean attention each value token receives (coverage, so every digit of a number gets slots). Gate: binary
    cross-entropy towards 1 on fact documents and 0 on filler. Zero where the network has no pointer/gate.
    """
    zero = out.a.new_zeros(())
    ptr = zero
    if out.pointer is not None:
        terms = []
        for i in range(n_fact):
            pos = docs[i].get("value_pos") or []
            if pos:
                p = out.pointer[i][:, pos]  # [slots, P]
                terms.append(-(p.sum(-1) + 1e-6).log().mean() - (p.mean(0) + 1e-6).log().mean())
        ptr = torch.stack(terms).mean() if terms else zero
    gate = zero
    if out.gate is not None:
        target = torch.zeros_like(out.gate)
        target[:n_fact] = 1.0
        gate = F.binary_cross_entropy(out.gate.clamp(1e-6, 1 - 1e-6), target)
    return ptr, gate


def group_loras(net: HyperNet, a: Tensor, b: Tensor, groups: list[list[int]]) -> tuple[Tensor, Tensor]:
    """One adapter per group of chunk LoRAs (:meth:`HyperNet.concat_chunks`, as the generator does for the chunks
    of one document), zero-padded along rank to the largest group (padding ranks are exact no-ops).

    ``a [M, L, r, in]``, ``b [M, L, out, r]`` -> ``[G, L, R, in]``, ``[G, L, out, R]``.
    """
    adapters = [net.concat_chunks(a[members], b[members]) for members in groups]
    width = max(ga.shape[1] for ga, _ in adapters)
    a_out = torch.stack([F.pad(ga, (0, 0, 0, width - ga.shape[1])) for ga, _ in adapters])
    b_out = torch.stack([F.pad(gb, (0, width - gb.shape[2])) for _, gb in adapters])
    return a_out, b_out


def _doc_loras(net: HyperNet, docs: list[CachedDoc], device: Any) -> tuple[Tensor, Tensor]:
    """One adapter per document (K = 1), bias block included."""
    out = _chunk_loras(net, docs, device)
    return group_loras(net, out.a, out.b, [[i] for i in range(len(docs))])


def qa_loss(model: Any, lora: RowLora, hc: HyperConfig, ab: tuple[Tensor, Tensor] | None,
            rows: list[tuple[int, dict[str, Any]]], device: Any) -> Tensor:  # fmt: skip
    """Per-row mean CE over answer tokens, ``[N]``; ``ab`` None = the base model without an adapter."""
    h, mask = pad_right([qa["hidden"].to(device, torch.float32) for _, qa in rows])
    weights = None
    if ab is not None:
        idx = torch.tensor([d for d, _ in rows], device=device)
        weights = {name: (ab[0][idx, i], ab[1][idx, i]) for i, name in enumerate(hc.module_names())}
    with lora.use(weights, hc.scale):
        out = run_blocks(model, h, mask, hc.layers[0], model.config.num_hidden_layers)
    ri, pi, tgt, owner = [], [], [], []
    for r, (_, qa) in enumerate(rows):
        for j in range(qa["n_prompt"], len(qa["ids"])):
            ri.append(r)
            pi.append(j - 1)
            tgt.append(int(qa["ids"][j]))
            owner.append(r)
    logits = logits_at(model, out, (torch.tensor(ri, device=device), torch.tensor(pi, device=device)))
    ce = F.cross_entropy(logits.float(), torch.tensor(tgt, device=device), reduction="none")
    owner_t = torch.tensor(owner, device=device)
    sums = torch.zeros(len(rows), device=device).index_add(0, owner_t, ce)
    counts = torch.zeros(len(rows), device=device).index_add(0, owner_t, torch.ones_like(ce))
    return sums / counts


def per_doc_mean(values: Tensor, rows: list[tuple[int, dict[str, Any]]]) -> Tensor:
    docs = sorted({d for d, _ in rows})
    return torch.stack([values[[i for i, (d, _) in enumerate(rows) if d == doc]].mean() for doc in docs]).mean()


@torch.no_grad()
def greedy_accuracy(model: Any, tokenizer: Any, lora: RowLora, hc: HyperConfig, docs: list[dict[str, Any]],
                    ab: tuple[Tensor, Tensor] | None, device: Any, max_new_tokens: int,
                    with_context: bool = False, batch: int = 32,
                    adapter_of: list[int] | None = None) -> tuple[float, list[str]]:  # fmt: skip
    """Share of questions whose greedy answer contains the gold answer (case-insensitive).

    Document ``i``'s questions use adapter ``ab[adapter_of[i]]`` (default: adapter ``i``).
    """
    items = [(di, qa) for di, d in enumerate(docs) for qa in d["qa"]]
    hits, answers = 0, []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            prompts = [question_prompt(tokenizer, qa["question"], docs[di]["text"] if with_context else None)
                       for di, qa in chunk]  # fmt: skip
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            weights = None
            if ab is not None:
                idx = torch.tensor([di if adapter_of is None else adapter_of[di] for di, _ in chunk], device=device)
                weights = {name: (ab[0][idx, i], ab[1][idx, i]) for i, name in enumerate(hc.module_names())}
            with lora.use(weights, hc.scale):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (_, qa), text in zip(chunk, texts, strict=True):
                hits += qa["answer"].lower() in text.lower()
                answers.append(text.strip())
    finally:
        tokenizer.padding_side = side
    return hits / max(1, len(items)), answers


# ---------------------------------------------------------------- the loop


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(step: int, cfg: TrainConfig, n: int) -> list[tuple[int, int]]:
    """(doc index, qa seed) for ``step``: epoch-wise permutations, so a resumed run sees the same order."""
    out = []
    for slot in range(step * cfg.docs_per_step, (step + 1) * cfg.docs_per_step):
        epoch, k = divmod(slot, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        out.append((int(perm[k]), slot))
    return out


def _groups(step: int, cfg: TrainConfig, n_docs: int, n_hay: int) -> list[list[int]]:
    """Partition batch slots ``0..n_docs-1`` into adapters of K documents (K ~ ``chunk_probs``); distractor
    chunks get indices ``n_docs + h`` for hay document ``h``. Deterministic in (seed, step)."""
    d = cfg.data
    rng = random.Random(f"{cfg.seed}:groups:{step}")
    groups, i = [], 0
    while i < n_docs:
        k = rng.choices(range(1, len(d.chunk_probs) + 1), weights=d.chunk_probs)[0]
        members = list(range(i, min(n_docs, i + k)))
        i += k
        if n_hay and rng.random() < d.p_hay:
            members += [n_docs + rng.randrange(n_hay) for _ in range(rng.randint(1, d.max_hay))]
        rng.shuffle(members)
        groups.append(members)
    return groups


def make_docs(d: DataConfig, seed: int, n_eval: int | None = None) -> tuple[list[synth.Doc], list[synth.Doc]]:
    """Training and held-out documents of a data config (held-out: seed + 1, unseen entities): fact documents
    and, for ``prose_share``, prose-like ones."""
    opts = {"n_facts": tuple(d.n_facts), "n_filler": tuple(d.n_filler), "vocab_size": d.vocab_size,
            "attributes": d.attributes, "n_hay": tuple(d.fact_hay)}  # fmt: skip
    out = []
    for n, s, split in ((d.n_train, seed, "train"), (d.n_eval if n_eval is None else n_eval, seed + 1, "heldout")):
        n_prose = round(n * d.prose_share)
        docs = synth.make_fact_docs(n - n_prose, s, split, **opts)
        if n_prose:
            docs += prose.make_prose_docs(n_prose, s, split, n_facts=tuple(d.prose_facts))
        out.append(docs)
    return out[0], out[1]


def _warm_start(net: HyperNet, source: Path, content_hash: str) -> None:
    """Copy the weights of checkpoint ``source`` into ``net``; ConfigError if its shape differs."""
    from agent_sleep.errors import ConfigError
    from agent_sleep.generators.checkpoint import load_checkpoint

    src = load_checkpoint(source, content_hash=content_hash)
    ignore = {"scale_B_init", "min_gate"}  # a fresh network's start; the generator's default pruning
    mine, theirs = net.config.model_dump(exclude=ignore), src.config.model_dump(exclude=ignore)
    diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if diff:
        raise ConfigError(f"init_from {source}: the checkpoint's {diff} differ from this recipe's hyper settings")
    net.load_state_dict(src.state_dict())


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def plot_metrics(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax1.plot([r["step"] for r in tr], [r["ce"] for r in tr], label="train CE (answer tokens)")
    if ev:
        ax1.plot([r["step"] for r in ev], [r["eval_ce"] for r in ev], "o-", label="held-out CE, D2L")
        ax1.axhline(ev[-1]["eval_ce_base"], color="grey", ls="--", label="held-out CE, no adapter")
        ax2.plot([r["step"] for r in ev], [r["acc"] for r in ev], "o-", label="D2L (no document)")
        for key, label in (("acc_shuffled", "D2L, another document's adapter"), ("acc_k3", "D2L, 3 documents in one")):
            pts = [(r["step"], r[key]) for r in ev if key in r]
            if pts:
                ax2.plot(*zip(*pts, strict=True), ".--", label=label)
        ax2.axhline(ev[-1]["acc_base"], color="grey", ls="--", label="base, no document")
        ax2.axhline(ev[-1]["acc_with_doc"], color="green", ls=":", label="base, document in context")
    ax1.set_xlabel("step")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out answer accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, run_dir: Path, *, device: str | None = None, max_minutes: float | None = None,
          threads: int | None = None, command: str = "", handle: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) meta-training in ``run_dir``; returns a summary dict. ``handle``: a preloaded base model."""
    from agent_sleep.models.loader import load_base_model

    t0 = time.monotonic()
    torch.set_num_threads(threads or cfg.threads)
    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = Path(run_dir)
    (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
    handle = handle or load_base_model(cfg.model, device=device, dtype=torch.float32)
    model, tok = handle.model, handle.tokenizer
    model.requires_grad_(False)
    hs = cfg.hyper
    hc = HyperConfig.for_model(model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                               layers=list(range(hs.first_lora_layer, model.config.num_hidden_layers)),
                               rank=hs.rank, encoder_layers=hs.encoder_layers, target=hs.target,
                               latent_dim=hs.latent_dim, n_latents=hs.n_latents, n_heads=hs.n_heads,
                               n_blocks=hs.n_blocks, scale=hs.scale, use_bias=hs.use_bias,
                               standardize=hs.standardize, scale_B_init=hs.scale_B_init, b_head=hs.b_head,
                               a_head=hs.a_head, chunk_gate=hs.chunk_gate,
                               min_gate=0.5 if hs.chunk_gate and cfg.gate_loss > 0 else 0.0)  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps({"train": cfg.model_dump(mode="json"), "command": command},
                                                    indent=2))  # fmt: skip

    d = cfg.data
    train_docs, eval_docs = make_docs(d, cfg.seed)
    key = cache_key(model=handle.content_hash, data=d.model_dump(mode="json"), seed=cfg.seed,
                    enc=hs.encoder_layers, first=hs.first_lora_layer)  # fmt: skip
    common = {"encoder_layers": hs.encoder_layers, "first_lora_layer": hs.first_lora_layer,
              "max_doc_tokens": d.max_doc_tokens, "device": device}  # fmt: skip
    qa_keys = ("qa", "probe_qa") if d.use_probe_qa else ("qa",)
    train_c = build_cache(model, tok, train_docs, path=run_dir / "cache" / f"train-{key}.pt", qa_keys=qa_keys,
                          desc="cache train", **common)  # fmt: skip
    eval_c = build_cache(model, tok, eval_docs, path=run_dir / "cache" / f"eval-{key}.pt", desc="cache eval",
                         **common)  # fmt: skip
    hay_c: list[CachedDoc] = []
    if d.n_hay:
        hay_docs = synth.make_hay_docs(d.n_hay, cfg.seed, tuple(d.hay_sentences))
        hay_key = cache_key(key=key, n=d.n_hay, sentences=d.hay_sentences)
        hay_c = build_cache(model, tok, hay_docs, path=run_dir / "cache" / f"hay-{hay_key}.pt", desc="cache hay",
                            **common)  # fmt: skip
    lora = RowLora(model, hc.module_names())
    metrics = run_dir / "metrics.jsonl"
    base_file = run_dir / "baseline.json"
    if base_file.exists():
        baseline = json.loads(base_file.read_text())
    else:
        rows = [(i, qa) for i, doc in enumerate(eval_c) for qa in doc["qa"]]
        with torch.no_grad():
            ce_base = per_doc_mean(qa_loss(model, lora, hc, None, rows, device), rows).item()
        acc_base, _ = greedy_accuracy(model, tok, lora, hc, eval_docs, None, device, cfg.eval_max_new_tokens)
        # With the document in context the base model often answers in a full sentence ("The magic number of X
        # is 4721."), so it gets more tokens than the adapter conditions (24 mixed held-out documents: 14.6 %
        # with 12 new tokens, 56.2 % with 32).
        acc_doc, _ = greedy_accuracy(model, tok, lora, hc, eval_docs, None, device,
                                     max(32, cfg.eval_max_new_tokens), True)  # fmt: skip
        baseline = {"eval_ce_base": ce_base, "acc_base": acc_base, "acc_with_doc": acc_doc,
                    "n_eval_questions": len(rows)}  # fmt: skip
        base_file.write_text(json.dumps(baseline, indent=2))

    net = HyperNet(hc)
    net.set_feature_stats(torch.cat([d["feats"] for d in train_c]))  # overwritten by a resumed state
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    step, best, trained_s = 0, -1.0, 0.0
    last = run_dir / "ckpt" / "last.pt"
    if cfg.init_from and not last.exists():
        _warm_start(net, Path(cfg.init_from), handle.content_hash)
    if last.exists():
        state = torch.load(last, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, best, trained_s = state["step"], state["best"], state.get("trained_s", 0.0)

    stop = {"flag": False}

    def _on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def save_last() -> None:
        tmp = last.with_suffix(f".tmp{os.getpid()}")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "best": best, "trained_s": trained_s, "hyper": hc.model_dump(mode="json")}, tmp)  # fmt: skip
        os.replace(tmp, last)

    def evaluate() -> dict[str, Any]:
        net.eval()
        with torch.no_grad():
            ab = _doc_loras(net, eval_c, device)
            rows = [(i, qa) for i, doc in enumerate(eval_c) for qa in doc["qa"]]
            ce = per_doc_mean(qa_loss(model, lora, hc, ab, rows, device), rows).item()
            acc, answers = greedy_accuracy(model, tok, lora, hc, eval_docs, ab, device, cfg.eval_max_new_tokens)
            # document dependence: every document's questions asked with the next document's adapter
            shifted = [(i + 1) % len(eval_docs) for i in range(len(eval_docs))]
            acc_shuffled, _ = greedy_accuracy(model, tok, lora, hc, eval_docs, ab, device, cfg.eval_max_new_tokens,
                                              adapter_of=shifted)  # fmt: skip
            extra: dict[str, Any] = {"acc_shuffled": acc_shuffled}
            if len(d.chunk_probs) > 1 or hay_c:
                # multi-chunk: 3 documents (+ 1 filler chunk when there are any) concatenated into one adapter
                groups = [list(range(i, min(i + 3, len(eval_c)))) for i in range(0, len(eval_c), 3)]
                members = list(eval_c) + hay_c[: len(groups)] if hay_c else list(eval_c)
                if hay_c:
                    groups = [g + [len(eval_c) + gi] for gi, g in enumerate(groups)]
                out = _chunk_loras(net, members, device)
                ab3 = group_loras(net, out.a, out.b, groups)
                if out.gate is not None and hay_c:
                    extra["gate_fact"] = out.gate[: len(eval_c)].mean().item()
                    extra["gate_filler"] = out.gate[len(eval_c) :].mean().item()
                of = [gi for gi, g in enumerate(groups) for m in g if m < len(eval_c)]
                extra["acc_k3"], _ = greedy_accuracy(model, tok, lora, hc, eval_docs, ab3, device,
                                                     cfg.eval_max_new_tokens, adapter_of=of)  # fmt: skip
        net.train()
        return {"kind": "eval", "step": step, "eval_ce": ce, "acc": acc, **extra, **baseline,
                "minutes": trained_s / 60, "samples": answers[:6]}  # fmt: skip

    bar = tqdm(total=cfg.steps, initial=step, desc="d2l meta-train", dynamic_ncols=True)
    net.train()
    window: list[float] = []
    aux_window: list[tuple[float, float]] = []
    try:
        while step < cfg.steps and not stop["flag"]:
            if max_minutes is not None and time.monotonic() - t0 > max_minutes * 60:
                break
            ts = time.monotonic()
            picked = _batch(step, cfg, len(train_c))
            docs = [train_c[i] for i, _ in picked]
            groups = _groups(step, cfg, len(docs), len(hay_c))
            group_of = {m: gi for gi, g in enumerate(groups) for m in g if m < len(docs)}
            rows, adapter_rows = [], []
            for j, (i, slot) in enumerate(picked):
                qas = docs[j]["qa"]
                chosen = random.Random(f"{cfg.seed}:{slot}").sample(qas, min(cfg.qas_per_doc, len(qas)))
                rows += [(j, qa) for qa in chosen]
                adapter_rows += [(group_of[j], qa) for qa in chosen]
            hays = sorted({m for g in groups for m in g if m >= len(docs)})
            chunks = docs + [hay_c[m - len(docs)] for m in hays]
            out = _chunk_loras(net, chunks, device)
            remap = {m: len(docs) + h for h, m in enumerate(hays)}
            ab = group_loras(net, out.a, out.b, [[remap.get(m, m) for m in g] for g in groups])
            ce = per_doc_mean(qa_loss(model, lora, hc, ab, adapter_rows, device), rows)
            reg = cfg.l1 * (out.a.abs().mean() + out.b.abs().mean())
            loss = ce + reg
            if cfg.pointer_loss or cfg.gate_loss:
                ptr_l, gate_l = aux_losses(out, chunks, len(docs))
                loss = loss + cfg.pointer_loss * ptr_l + cfg.gate_loss * gate_l
                aux_window.append((ptr_l.item(), gate_l.item()))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip).item()
            opt.step()
            sched.step()
            step += 1
            trained_s += time.monotonic() - ts
            window.append(ce.item())
            bar.update()
            bar.set_postfix(ce=f"{ce.item():.3f}")
            if step % cfg.log_every == 0:
                aux = {}
                if aux_window:
                    aux = {"pointer_loss": sum(p for p, _ in aux_window) / len(aux_window),
                           "gate_loss": sum(g for _, g in aux_window) / len(aux_window)}  # fmt: skip
                _append(metrics, {"kind": "train", "step": step, "ce": sum(window) / len(window), "reg": reg.item(),
                                  "grad_norm": gnorm, "lr": sched.get_last_lr()[0], **aux,
                                  "sec_per_step": (time.monotonic() - ts), "minutes": trained_s / 60})  # fmt: skip
                window.clear()
                aux_window.clear()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                rec = evaluate()
                _append(metrics, rec)
                k3 = f", 3 docs in one adapter {rec['acc_k3']:.3f}" if "acc_k3" in rec else ""
                bar.write(f"step {step}: held-out acc {rec['acc']:.3f} (another doc's adapter "
                          f"{rec['acc_shuffled']:.3f}{k3}; base {baseline['acc_base']:.3f}, with doc "
                          f"{baseline['acc_with_doc']:.3f}) CE {rec['eval_ce']:.3f} (base {baseline['eval_ce_base']:.3f})")
                if rec["acc"] > best:
                    best = rec["acc"]
                    save_checkpoint(net, run_dir / "ckpt" / "best", version=f"step{step}", overwrite=True,
                                    extra={"training": {"step": step, "minutes": trained_s / 60, "command": command,
                                                        "eval": {k: rec[k] for k in ("acc", "eval_ce", *baseline)},
                                                        "config": cfg.model_dump(mode="json")}})  # fmt: skip
                plot_metrics(metrics, run_dir / "metrics.png")
            if step % cfg.ckpt_every == 0:
                save_last()
    finally:
        save_last()
        bar.close()
        lora.remove()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if metrics.exists():
        plot_metrics(metrics, run_dir / "metrics.png")
    return {"step": step, "best_acc": best, "minutes": trained_s / 60, "stopped": stop["flag"], **baseline}
