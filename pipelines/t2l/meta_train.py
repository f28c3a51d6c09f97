"""Meta-train the Text-to-LoRA hypernetwork end to end (SFT) on the synthetic behaviours, read top to bottom.

    .venv/bin/python pipelines/t2l/meta_train.py --config pipelines/t2l/meta_train.yaml \
        --run-dir /work/t2l-runs/cpu1 --device cpu

Student = frozen base + the LoRA generated from a task description, *without* the instruction in the prompt; loss =
CE on the target answer tokens + L2 on the generated A, B. Only the hypernetwork trains (AdamW, warmup + cosine,
clip 1.0). Each step is ``batch`` examples of distinct tasks, each with its own LoRA (per-row hooks).

What makes this affordable on one CPU core: the LoRA sits only on layers ``>= first_lora_layer``, so the layers
below run without gradients; descriptions are embedded once per run (cached); logits only on answer tokens.

Resumable: ``run_dir/ckpt/last.pt`` is written every ``ckpt_every`` steps, on SIGTERM/SIGINT and at
``--max-minutes``; rerunning the same command continues from it with the same data order. ``run_dir/metrics.jsonl``
gets train records and held-out eval records (exact match on seen tasks with held-out paraphrases, on unseen tasks
and unseen families; with the own and a shuffled description; base model without and with the instruction);
``run_dir/metrics.png`` plots them; ``ckpt/best`` keeps the best eval. Runs unchanged on CUDA (``--device cuda``).

The recipe itself lives in :mod:`pipelines.t2l.trainer`; this file is the CLI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.t2l.trainer import TrainConfig, train
from pipelines.training import interpreter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML recipe config")
    parser.add_argument("--run-dir", type=Path, required=True, help="checkpoints, cache, metrics (resumes if present)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this many minutes of training in this call "
                        "(caching and baselines before it not counted)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: config)")
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config)
    if args.steps is not None:
        config = config.model_copy(update={"steps": args.steps})
    summary = train(config, args.run_dir, device=args.device, max_minutes=args.max_minutes, threads=args.threads,
                    command=shlex.join([interpreter(), *sys.argv]))  # fmt: skip
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
