"""Export a meta-training run's best hypernetwork as the committed fp16 checkpoint.

    .venv/bin/python pipelines/d2l/export.py runs/d2l/cpu1 \
        --dest agent_sleep/generators/checkpoints/d2l-smollm2-135m

Reads ``RUN/ckpt/best`` (fp32, written at the best held-out eval), casts to
fp16 and writes it with a config that records the training command, steps,
minutes and held-out accuracy with and without the adapter (and with the
document in context). Refuses to replace an existing checkpoint unless
``--force`` when its recorded held-out accuracy is higher, or when it was
trained on other data (the two accuracies were measured on different documents
then; compare both with ``pipelines/d2l/evaluate.py`` on one mix first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent_sleep.generators.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--dest", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--force", action="store_true", help="replace even a checkpoint with better recorded accuracy")
    parser.add_argument("--min-gate", type=float, default=None,
                        help="set the generator's default chunk pruning threshold (default: the run's)")
    args = parser.parse_args(argv)
    src = args.run_dir / "ckpt" / "best"
    config = read_checkpoint_config(src)
    training = dict(config.get("training", {}))
    acc = training.get("eval", {}).get("acc", 0.0)
    if (args.dest / CONFIG_FILE).exists() and not args.force:
        old_training = read_checkpoint_config(args.dest).get("training", {})
        old = old_training.get("eval", {}).get("acc", -1.0)
        if old_training.get("config", {}).get("data") != training.get("config", {}).get("data"):
            print(f"kept {args.dest}: it was trained on other data, so its held-out accuracy {old:.3f} and this "
                  f"run's {acc:.3f} are not comparable; compare both with pipelines/d2l/evaluate.py on one mix "
                  "(--attributes, --n-facts, --prose-share), then use --force")  # fmt: skip
            return 1
        if old > acc:
            print(f"kept {args.dest}: its held-out accuracy {old:.3f} beats {acc:.3f} (use --force)")
            return 1
    net = load_checkpoint(src, content_hash=None)
    if args.min_gate is not None:  # e.g. a run trained with gate_loss by code that did not record min_gate yet
        from agent_sleep.generators.hypernet import HyperNet

        state = net.state_dict()
        net = HyperNet(net.config.model_copy(update={"min_gate": args.min_gate}))
        net.load_state_dict(state)
    metrics = args.run_dir / "metrics.jsonl"
    curve = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    training["curve"] = [
        {k: r[k] for k in ("step", "minutes", "ce", "eval_ce", "acc") if k in r} for r in curve
        if r.get("kind") == "eval" or r["step"] % 25 == 0
    ]  # fmt: skip
    training["run_dir"] = str(args.run_dir)
    version = f"{dt.date.today():%Y.%m.%d}-{args.run_dir.name}-{config.get('version', 'step0')}"  # unique per run
    save_checkpoint(net, args.dest, version=version, dtype=torch.float16, overwrite=True,
                    extra={"training": training, "exported_at": dt.datetime.now(dt.UTC).isoformat()})  # fmt: skip
    size = (args.dest / WEIGHTS_FILE).stat().st_size
    print(json.dumps({"dest": str(args.dest), "version": version, "bytes": size, "acc": acc}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
