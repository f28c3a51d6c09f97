"""Export a T2L meta-training run's best hypernetwork as the committed fp16 checkpoint.

    .venv/bin/python pipelines/t2l/export.py /work/t2l-runs/cpu1 \
        --dest agent_sleep/generators/checkpoints/t2l-smollm2-135m [--eval FILE.json]

Reads ``RUN/ckpt/best`` (fp32, written at the best held-out eval), casts to fp16 and writes it with a config that
records the training command, steps, minutes, the eval record that made it the best, the eval curve and, with
``--eval``, the scores of ``pipelines/t2l/evaluate.py``. Refuses (exit 1) a checkpoint whose steering margin on
held-out paraphrases of the training tasks (exact match with the own description minus with another task's) is not
positive: it would ignore its description. Refuses to replace an existing checkpoint with a better recorded score
(seen + unseen-task exact match) unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent_sleep.generators.checkpoint import WEIGHTS_FILE, load_checkpoint, read_checkpoint_config, save_checkpoint
from agent_sleep.generators.t2l import DEFAULT_CHECKPOINT
from agent_sleep.generators.t2l_net import T2L_FORMAT


def _score(ev: dict[str, float]) -> float:
    return (ev.get("seen/exact", 0.0) + ev.get("unseen_task/exact", 0.0)) / 2


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--dest", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--eval", type=Path, default=None, help="evaluate.py --out JSON to record with it")
    parser.add_argument("--force", action="store_true", help="replace even a checkpoint with a better recorded score")
    args = parser.parse_args(argv)
    src = args.run_dir / "ckpt" / "best"
    config = read_checkpoint_config(src, fmt=T2L_FORMAT)
    training = dict(config.get("training", {}))
    ev = training.get("eval", {})
    if ev.get("seen/margin", 0.0) <= 0:
        print(f"refused: {src} has no positive steering margin on held-out paraphrases "
              f"(seen/margin = {ev.get('seen/margin')}); it does not follow its description")  # fmt: skip
        return 1
    if (args.dest / T2L_FORMAT.config_file).exists() and not args.force:
        old = read_checkpoint_config(args.dest, fmt=T2L_FORMAT).get("training", {}).get("eval", {})
        if _score(old) > _score(ev):
            print(f"kept {args.dest}: its recorded score {_score(old):.3f} beats {_score(ev):.3f} (use --force)")
            return 1
    net = load_checkpoint(src, content_hash=None, fmt=T2L_FORMAT)
    metrics = args.run_dir / "metrics.jsonl"
    curve = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    keep = ("step", "minutes", "ce", "seen/exact", "seen/shuffled_exact", "unseen_task/exact",
            "unseen_task/shuffled_exact", "unseen_family/exact", "seen/b_spread")  # fmt: skip
    training["curve"] = [{k: r[k] for k in keep if k in r} for r in curve
                         if r.get("kind") == "eval" or r["step"] % 50 == 0]  # fmt: skip
    training["run_dir"] = str(args.run_dir)
    if args.eval is not None:
        scores = json.loads(args.eval.read_text())
        training["evaluate"] = {k: v for k, v in scores.items() if k not in ("samples",)}
    version = f"{dt.date.today():%Y.%m.%d}-{args.run_dir.name}-{config.get('version', 'step0')}"
    save_checkpoint(net, args.dest, version=version, dtype=torch.float16, overwrite=True, fmt=T2L_FORMAT,
                    extra={"training": training, "exported_at": dt.datetime.now(dt.UTC).isoformat()})  # fmt: skip
    size = (args.dest / WEIGHTS_FILE).stat().st_size
    print(json.dumps({"dest": str(args.dest), "version": version, "bytes": size, "seen/margin": ev["seen/margin"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
