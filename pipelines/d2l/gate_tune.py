"""Fine-tune only the chunk gate of a D2L checkpoint on many filler styles, read top to bottom.

    .venv/bin/python pipelines/d2l/gate_tune.py agent_sleep/generators/checkpoints/d2l-smollm2-135m \
        --out runs/d2l/gate-styles-10k --threads 1 --cache runs/d2l/gate-cache

Meta-training taught the gate (``HyperNet.gate``: sigmoid(w . mean latent + b)) to tell fact chunks from ONE
filler style, the pastoral sentences of ``synth._HAY``; on other filler (narrative prose, a manual, a chat
transcript) it stays open for every chunk (issue #14). Here everything but the gate is frozen, so a chunk's
latents do not change: each training chunk is encoded once (base model's first ``encoder_layers`` blocks, then
the hypernetwork's Perceiver) to its mean latent, and the gate's 257 parameters are fit by class-balanced binary
cross-entropy, full batch: 1 on chunks that hold something to keep, 0 on filler chunks.

Chunks are cut as :meth:`D2LGenerator.encode_chunks` cuts documents (``chunk_tokens`` tokens from the start of
a haystack), from :func:`pipelines.d2l.haystacks.make_haystack` haystacks of the TRAINING filler styles
(:data:`~pipelines.d2l.haystacks.TRAIN_STYLES`) with a TRAINING needle form, ``split="train"`` entities:
the needle's chunk is a positive, the others negatives. Fact documents of meta-training's own kinds
(``synth.make_fact_docs`` and ``pages.make_pages``, train split) are positives too, so the gate keeps meaning
"this chunk states facts", and whole ``pages`` haystack chunks (other documents' pages state facts) are left
out of both classes. The held-out style and needle form (``haystacks.HELDOUT_*``) are never drawn here
(``haystacks.check_train``). A validation set (other seeds) reports accuracy before and after.

Writes a new checkpoint folder in the committed format at ``--out`` (never over the input): the same config
(plus ``gate_tune`` provenance) and weights, identical except ``gate.weight`` and ``gate.bias`` (checked before
writing). Not here: choosing the generator's chunk cap (``evals/bench_niah.py``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipelines.d2l import haystacks, pages, synth  # noqa: E402

GATE_KEYS = ("gate.weight", "gate.bias")


def training_texts(n_haystacks: int, seed: int, tokenizer: Any, chunk_tokens: int,
                   styles: tuple[str, ...], forms: tuple[str, ...]) -> list[tuple[list[int], float, str]]:  # fmt: skip
    """(chunk token ids, label, source) for haystacks of ``styles`` x ``forms`` plus fact documents."""
    haystacks.check_train(styles, forms)
    rng = random.Random(f"gate-tune:{seed}")
    out: list[tuple[list[int], float, str]] = []
    usable = [s for s in styles if s != "pages"]
    for i in range(n_haystacks):
        style, form = usable[i % len(usable)], rng.choice(forms)
        doc = haystacks.make_haystack(style, form, rng.choice([3, 4, 5]) * chunk_tokens, seed * 100_003 + i,
                                      tokenizer, split="train")  # fmt: skip
        enc = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
        lo, hi = doc["spans"]["needle"]
        ids = enc["input_ids"]
        for start in range(0, len(ids), chunk_tokens):
            offsets = enc["offset_mapping"][start : start + chunk_tokens]
            has_needle = any(a < hi and b > lo for a, b in offsets)
            whole = any(a <= lo for a, _ in offsets) and any(b >= hi for _, b in offsets)
            if has_needle and not whole:
                continue  # a chunk holding only part of the needle: neither class
            out.append((ids[start : start + chunk_tokens], float(has_needle), style))
    n_facts = max(1, n_haystacks // 2)
    facts = synth.make_fact_docs(n_facts, seed, "train", n_facts=(1, 3), n_hay=(0, 6))
    facts += pages.make_pages(n_facts, seed, "train", tokenizer=tokenizer)
    for doc in facts:
        out.append((tokenizer(doc["text"], add_special_tokens=False)["input_ids"][:chunk_tokens], 1.0, doc["kind"]))
    return out


@torch.no_grad()
def mean_latents(net: Any, model: Any, chunks: list[list[int]], batch: int = 8) -> torch.Tensor:
    """Each chunk's mean latent ``[N, latent_dim]``, the gate's input (what a frozen Perceiver makes of it)."""
    from agent_sleep.generators.backbone import hidden_after, pad_ids

    device = next(model.parameters()).device
    out = []
    for i in range(0, len(chunks), batch):
        ids, mask = pad_ids(chunks[i : i + batch], device)
        feats = hidden_after(model, ids, mask, net.config.encoder_layers)
        out.append(net._encode(feats.float(), mask.bool())[2].mean(1).float().cpu())
    return torch.cat(out)


def fit_gate(gate: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
             weight_decay: float) -> list[float]:  # fmt: skip
    """Class-balanced BCE on the gate's logits, full batch, Adam; returns the loss curve (every 50 steps)."""
    gate.requires_grad_(True)
    pos = y.mean().clamp(1e-3, 1 - 1e-3)
    weights = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
    curve = []
    for step in range(steps):
        logits = gate(x)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            curve.append(round(loss.item(), 5))
    gate.requires_grad_(False)
    return curve


def gate_report(gate: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, sources: list[str],
                min_gate: float) -> dict[str, Any]:  # fmt: skip
    """Keep rate (gate >= min_gate) per source and label: what the generator would keep."""
    with torch.no_grad():
        g = torch.sigmoid(gate(x)[:, 0])
    out: dict[str, Any] = {}
    for src in sorted(set(sources)):
        for label in (0.0, 1.0):
            idx = [i for i, (s, t) in enumerate(zip(sources, y.tolist(), strict=True)) if s == src and t == label]
            if idx:
                kept = float((g[idx] >= min_gate).float().mean())
                out[f"{src}/{'keep' if label else 'filler'}"] = {"n": len(idx), "kept": round(kept, 3)}
    out["accuracy"] = round(float(((g >= min_gate).float() == y).float().mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    from agent_sleep.generators.checkpoint import WEIGHTS_FILE, load_checkpoint, read_checkpoint_config, save_checkpoint
    from agent_sleep.models.loader import load_base_model
    from pipelines.d2l.data import cache_key
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a D2L checkpoint folder with a chunk gate")
    parser.add_argument("--out", type=Path, required=True, help="new checkpoint folder (must not exist)")
    parser.add_argument("--haystacks", type=int, default=240, help="training haystacks (3-5 chunks each)")
    parser.add_argument("--val-haystacks", type=int, default=60)
    parser.add_argument("--styles", default=",".join(haystacks.TRAIN_STYLES))
    parser.add_argument("--forms", default=",".join(haystacks.TRAIN_NEEDLES))
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the chunks' mean latents (reused when checkpoint and data are the same)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; gate_tune writes a new checkpoint folder")
    styles, forms = tuple(args.styles.split(",")), tuple(args.forms.split(","))
    haystacks.check_train(styles, forms)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    config = read_checkpoint_config(args.checkpoint)
    handle = load_base_model(config["hyper"]["base_model_id"])
    net = load_checkpoint(args.checkpoint, content_hash=handle.content_hash, device=handle.device)
    if not net.config.chunk_gate:
        parser.error(f"{args.checkpoint} has no chunk gate (chunk_gate: false)")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tok = handle.tokenizer

    data = {}
    for name, n, seed in (("train", args.haystacks, args.seed), ("val", args.val_haystacks, args.seed + 1)):
        key = cache_key(checkpoint=read_checkpoint_config(args.checkpoint), n=n, seed=seed, styles=styles, forms=forms,
                        chunk_tokens=args.chunk_tokens, model=handle.content_hash)  # fmt: skip
        cached = args.cache / f"{name}-{key}.pt" if args.cache else None
        if cached is not None and cached.is_file():
            data[name] = torch.load(cached)
            continue
        rows = training_texts(n, seed, tok, args.chunk_tokens, styles, forms)
        x = mean_latents(net, handle.model, [r[0] for r in rows])
        data[name] = (x, torch.tensor([r[1] for r in rows]), [r[2] for r in rows])
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(data[name], cached)
        print(f"{name}: {len(rows)} chunks ({int(data[name][1].sum())} to keep) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    min_gate = net.config.min_gate
    report: dict[str, Any] = {"before": {k: gate_report(net.gate, *data[k], min_gate) for k in data}}
    gate = torch.nn.Linear(net.gate.in_features, 1)
    gate.load_state_dict(net.gate.state_dict())
    report["curve"] = fit_gate(gate, data["train"][0], data["train"][1], steps=args.steps, lr=args.lr,
                               weight_decay=args.weight_decay)  # fmt: skip
    report["after"] = {k: gate_report(gate, *data[k], min_gate) for k in data}
    net.gate.load_state_dict(gate.state_dict())

    after = net.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    if set(changed) - set(GATE_KEYS):
        raise SystemExit(f"refusing to write: parameters other than the gate changed: {changed}")
    original = load_file(str(args.checkpoint / WEIGHTS_FILE))
    dtype = next(iter(original.values())).dtype  # the committed checkpoint is fp16: write the same
    extra = {k: v for k, v in config.items() if k not in ("format", "format_version", "version", "hyper")}
    extra["gate_tune"] = {"from": str(args.checkpoint), "command": " ".join(["pipelines/d2l/gate_tune.py",
                          *(argv if argv is not None else sys.argv[1:])]), "styles": list(styles), "forms": list(forms),
                          "changed": changed, **report}  # fmt: skip
    save_checkpoint(net, args.out, version=f"{config.get('version', '0')}+gate", dtype=dtype, extra=extra)
    written = load_file(str(args.out / WEIGHTS_FILE))
    differ = sorted(k for k in original if not torch.equal(original[k], written[k]))
    if set(differ) - set(GATE_KEYS) or set(written) != set(original):
        raise SystemExit(f"{args.out}: tensors other than the gate differ from {args.checkpoint}: {differ}")
    print(json.dumps({k: report[k] for k in ("before", "after")}, indent=1))
    print(f"changed: {changed}; the written file differs from the input only in {differ}; wrote {args.out} in "
          f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
