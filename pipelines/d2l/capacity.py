"""Capacity diagnostic for Doc-to-LoRA: can the generator fit the pages it is *trained* on?

Issue #14 asks, if the 135M model's capacity is the limit, for evidence from training documents rather than
held-out ones. This script meta-trains (warm start, the recipe's losses) on a small fixed set of generated pages
(:mod:`pipelines.d2l.pages`, pages only, one page per adapter) for many epochs and measures, on those same pages,
greedy answer accuracy without the page (base + generated adapter) beside the base model with the page in its
prompt (the teacher) and without it. Two question sets per page: ``qa`` (the wording trained on) and ``probe_qa``
(another wording of the same facts, never trained on). If even the trained questions stay far below the in-context
accuracy after the training loss has flattened, the generator (or its LoRA target) cannot hold a page.

``--written`` swaps the generated pages for ``--pages`` hand-written *training* pages (``pipelines/d2l/written``,
every folder but ``validation``, spread evenly over them; ``question`` trains, ``question2`` is the unseen wording):
the same question on the pages real agents meet.

``--rank R`` above the checkpoint's rank grows the network function-preservingly before training
(:func:`pipelines.d2l.trainer.grow_rank`, also what a recipe's ``init_from`` does for a higher rank): the
checkpoint's slots are copied, the new slots get copies of a sibling slot's query plus noise and a zero B scale,
so step 0 is exactly the checkpoint. ``--first-lora-layer`` below the checkpoint's is
not supported (the question-state cache and the slot layout would change).

    PYTHONPATH=. .venv/bin/python pipelines/d2l/capacity.py --run-dir runs/d2l/capacity-r8 --pages 24 \
        --steps 240 --eval-at 0 60 120 240 --out evals/results/d2l_capacity.json --tag down_proj_r8

Appends (or replaces, by ``--tag``) one entry in ``--out``. Never reads ``evals/docs*``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from agent_sleep.generators.hypernet import HyperNet
from pipelines.d2l.objective import doc_loras, greedy_accuracy
from pipelines.d2l import written
from pipelines.d2l.trainer import (Setup, TrainConfig, TrainState, fresh_state, grow_rank, resume, setup,
                                   train_step)  # fmt: skip
from pipelines.training import interpreter as _interpreter

__all__ = ["capacity_config", "measure"]


def capacity_config(base: TrainConfig, *, pages: int, steps: int, rank: int | None, lr: float | None,
                    qas_per_doc: int, cd_cache: str | None) -> TrainConfig:  # fmt: skip
    """``base`` narrowed to ``pages`` generated pages (one per adapter, no filler or hay, no probe questions in
    training), pages short enough to fit ``max_doc_tokens`` whole, no chunk-gate loss (nothing to gate)."""
    d = base.data.model_copy(update={
        "n_train": pages, "n_eval": 2, "pages_share": 1.0, "prose_share": 0.0, "n_hay": 0, "p_hay": 0.0,
        "chunk_probs": [1.0], "use_probe_qa": False,
        "pages_tokens": (base.data.pages_tokens[0], min(base.data.pages_tokens[1], base.data.max_doc_tokens - 8)),
    })  # fmt: skip
    h = base.hyper if rank is None else base.hyper.model_copy(update={"rank": rank})
    upd: dict[str, Any] = {"data": d, "hyper": h, "steps": steps, "gate_loss": 0.0, "qas_per_doc": qas_per_doc,
                           "eval_every": 10**9, "cd_cache": cd_cache}  # fmt: skip
    if lr is not None:
        upd["lr"] = lr
    return base.model_copy(update=upd)


def written_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` (from :func:`capacity_config`) with the hand-written training folders as its only documents
    (:func:`pick_spread` narrows them to ``--pages`` after caching); pages up to 640 tokens, as written1 trained."""
    d = cfg.data.model_copy(update={
        "n_train": 0, "pages_share": 0.0, "written_dirs": [str(f) for f in written.train_folders()],
        "written_repeat": 1, "eval_written": None, "max_doc_tokens": max(cfg.data.max_doc_tokens, 640),
    })  # fmt: skip
    return cfg.model_copy(update={"data": d})


def pick_spread(n_docs: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n_docs)`` (the written folders are listed domain by domain)."""
    if not 0 < k <= n_docs:
        raise ValueError(f"--pages {k}: there are {n_docs} hand-written training pages")
    return sorted({(i * n_docs) // k for i in range(k)})


def free_loras(s: Setup, docs: list[dict[str, Any]], *, steps: int, lr: float, rank: int,
               max_new: int) -> dict[str, Any]:  # fmt: skip
    """The target's own capacity, without a hypernetwork: per page, a free LoRA of ``rank`` on the generator's
    target modules (A random, B zero, the generator's scale) optimised directly (Adam, ``steps`` full-batch steps)
    on the recipe's loss for that page's training rows, then greedy accuracy on its ``qa`` and ``probe`` wordings.
    An upper bound for what any generator emitting such a LoRA could reach on these pages."""
    import math

    from pipelines.d2l.objective import cd_loss, qa_loss

    cfg, hc = s.cfg, s.hc
    generated = bool(cfg.cd_loss) and cfg.cd_target == "generated"
    hits = {"qa": 0, "probe": 0}
    n = {"qa": 0, "probe": 0}
    first, final = [], []
    for i, (cached, doc) in enumerate(zip(s.train_c, docs, strict=True)):
        g = torch.Generator().manual_seed(i)
        a = (torch.randn(1, len(hc.layers), rank, hc.d_in, generator=g) / math.sqrt(hc.d_in)).to(s.device)
        b = torch.zeros(1, len(hc.layers), hc.d_out, rank, device=s.device)
        a.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.Adam([a, b], lr=lr)
        rows = [(0, (qa["cd"] or qa) if generated else qa) for qa in cached["qa"]]
        for step in range(steps):
            if cfg.cd_loss:
                kl, ce = cd_loss(s.model, s.lora, hc, (a, b), rows, s.device)
                loss = cfg.ce_weight * ce.mean() + cfg.cd_loss * kl.mean()
            else:
                loss = qa_loss(s.model, s.lora, hc, (a, b), rows, s.device).mean()
            if step == 0:
                first.append(loss.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        final.append(loss.item())
        with torch.no_grad():
            for key, d in (("qa", doc), ("probe", {**doc, "qa": doc["probe_qa"]})):
                acc, _ = greedy_accuracy(s.model, s.tok, s.lora, hc, [d], (a.detach(), b.detach()), s.device, max_new)
                hits[key] += round(acc * len(d["qa"]))
                n[key] += len(d["qa"])
        print(f"free lora page {i}: loss {first[-1]:.3f} -> {final[-1]:.3f}; {hits} of {n}", flush=True)
    return {"qa": hits["qa"] / n["qa"], "probe": hits["probe"] / n["probe"], "rank": rank, "steps": steps, "lr": lr,
            "loss_first": sum(first) / len(first), "loss_final": sum(final) / len(final)}


def _probe_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**d, "qa": d["probe_qa"]} for d in docs]


def measure(s: Setup, net: HyperNet | None, docs: list[dict[str, Any]], max_new: int,
            control: bool = True) -> dict[str, float]:  # fmt: skip
    """Greedy accuracy on the training pages' trained (``qa``) and unseen (``probe``) wordings through each page's
    adapter and, with ``control``, with the next page's adapter (``*_other``: document dependence)."""
    net_was = net.training if net is not None else False
    out: dict[str, float] = {}
    if net is not None:
        net.eval()
        with torch.no_grad():
            ab = doc_loras(net, s.train_c, s.device)
        shifted = [(i + 1) % len(docs) for i in range(len(docs))]
        for key, ds in (("qa", docs), ("probe", _probe_docs(docs))):
            out[key], _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, ds, ab, s.device, max_new)
            if control:
                out[f"{key}_other"], _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, ds, ab, s.device, max_new,
                                                         adapter_of=shifted)  # fmt: skip
        net.train(net_was)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("pipelines/d2l/meta_train_cd.yaml"))
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--pages", type=int, default=24)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--eval-at", type=int, nargs="+", default=[0, 60, 120, 240])
    p.add_argument("--rank", type=int, default=None, help="grow the checkpoint to this rank (function-preserving)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--qas-per-doc", type=int, default=4)
    p.add_argument("--cd-cache", default=None, help="shared teacher cache folder (default RUN_DIR/teacher)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--free-lora", type=int, default=None, metavar="STEPS",
                   help="no hypernetwork: fit a free LoRA per page for STEPS steps (the target's capacity)")
    p.add_argument("--free-lr", type=float, default=2e-3)
    p.add_argument("--no-in-context", action="store_true",
                   help="skip the page-in-context reference (on 640-token pages it costs more CPU than the run)")
    p.add_argument("--written", action="store_true",
                   help="hand-written training pages (pipelines/d2l/written) instead of generated ones")
    p.add_argument("--reuse-reference", default=None, metavar="TAG",
                   help="take the base / in-context accuracies from this earlier entry of --out (same pages)")
    args = p.parse_args(argv)
    base = TrainConfig.load(args.config)
    cfg = capacity_config(base, pages=args.pages, steps=args.steps, rank=args.rank, lr=args.lr,
                          qas_per_doc=args.qas_per_doc, cd_cache=args.cd_cache)  # fmt: skip
    if args.written:
        cfg = written_config(cfg)
    grown = args.rank is not None and args.rank != base.hyper.rank
    if grown:
        cfg = cfg.model_copy(update={"init_from": None})
    command = shlex.join([_interpreter(), *sys.argv])
    t0 = time.monotonic()
    s = setup(cfg, args.run_dir, device=args.device, threads=args.threads, command=command, handle=None)
    from pipelines.d2l.trainer import make_docs

    train_docs, _ = make_docs(cfg.data, cfg.seed)
    if args.written:
        keep = pick_spread(len(train_docs), args.pages)
        train_docs = [train_docs[i] for i in keep]
        s = dataclasses.replace(s, train_c=[s.train_c[i] for i in keep])
    mx = cfg.eval_max_new_tokens
    ref: dict[str, Any] = {}
    if args.reuse_reference:
        earlier = {r["tag"]: r for r in json.loads(args.out.read_text())["runs"]}[args.reuse_reference]
        if earlier["pages"] != args.pages or earlier["questions_qa"] != sum(len(d["qa"]) for d in train_docs):
            raise ValueError(f"--reuse-reference {args.reuse_reference}: other pages")
        ref = dict(earlier["reference"])
    for key, ds in (("qa", train_docs), ("probe", _probe_docs(train_docs))) if not ref else ():
        ref[f"{key}_base"], _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, ds, None, s.device, mx)
        if not args.no_in_context:
            ref[f"{key}_in_context"], _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, ds, None, s.device,
                                                          max(32, mx), True)  # fmt: skip
    print("reference", ref, flush=True)
    if args.free_lora is not None:
        try:
            free = free_loras(s, train_docs, steps=args.free_lora, lr=args.free_lr,
                              rank=args.rank or cfg.hyper.rank, max_new=mx)  # fmt: skip
        finally:
            s.lora.remove()
        _record(args, {"tag": args.tag, "command": command, "pages": args.pages,
                       "questions_qa": sum(len(d["qa"]) for d in train_docs),
                       "hyper": {"rank": args.rank or cfg.hyper.rank, "target": cfg.hyper.target,
                                 "first_lora_layer": cfg.hyper.first_lora_layer},
                       "free_lora": free, "reference": ref, "wall_minutes": (time.monotonic() - t0) / 60})  # fmt: skip
        return 0
    state: TrainState = fresh_state(s)
    if grown:
        grow_rank(state.net, Path(base.init_from), s.handle.content_hash, cfg.seed)  # type: ignore[arg-type]
    else:
        resume(state, s)
    curve: list[dict[str, Any]] = []
    window: list[float] = []
    cd_window: list[float] = []
    train_s = 0.0
    try:
        while True:
            if state.step in args.eval_at:
                last = state.step >= min(cfg.steps, max(args.eval_at))
                rec = {"step": state.step, **measure(s, state.net, train_docs, mx, control=last or state.step == 0),
                       "train_ce": sum(window) / len(window) if window else None,
                       "train_kl": sum(cd_window) / len(cd_window) if cd_window else None, "train_minutes": train_s / 60}
                window.clear()
                cd_window.clear()
                curve.append(rec)
                print(json.dumps(rec), flush=True)
            if state.step >= min(cfg.steps, max(args.eval_at)):
                break
            ts = time.monotonic()
            res = train_step(s, state)
            train_s += time.monotonic() - ts
            state.step += 1
            window.append(res.ce.item())
            if "cd_kl" in res.terms:
                cd_window.append(res.terms["cd_kl"])
    finally:
        s.lora.remove()
    n_q = sum(len(d["qa"]) for d in train_docs)
    entry = {"tag": args.tag, "command": command, "pages": args.pages, "questions_qa": n_q,
             "documents": "written" if args.written else "generated",
             "page_names": [d.get("name") for d in train_docs] if args.written else None,
             "questions_probe": sum(len(d["probe_qa"]) for d in train_docs),
             "hyper": {"rank": cfg.hyper.rank, "target": cfg.hyper.target, "first_lora_layer": cfg.hyper.first_lora_layer},
             "lr": cfg.lr, "qas_per_doc": cfg.qas_per_doc, "docs_per_step": cfg.docs_per_step, "steps": state.step,
             "max_new_tokens": mx, "reference": ref, "curve": curve, "wall_minutes": (time.monotonic() - t0) / 60,
             "teacher_stats": json.loads((args.run_dir / "teacher_stats.json").read_text())
             if (args.run_dir / "teacher_stats.json").exists() else None}  # fmt: skip
    _record(args, entry)
    return 0


def _record(args: argparse.Namespace, entry: dict[str, Any]) -> None:
    out = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    out["runs"] = [r for r in out["runs"] if r["tag"] != args.tag] + [entry]
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
