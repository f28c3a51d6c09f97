"""Meta-train the Doc-to-LoRA hypernetwork by QA distillation, read top to bottom.

    .venv/bin/python pipelines/d2l/meta_train.py --config pipelines/d2l/meta_train.yaml \
        --run-dir runs/d2l/cpu --device cpu --max-minutes 70

Student = frozen base + generated LoRA, *without* the document; loss = CE on
the gold answer tokens of questions about the document (per-document
average) + L1 on the generated A, B. Only the hypernetwork trains (AdamW,
warmup + cosine, clip 1.0).

What makes this affordable on two CPU cores: the LoRA sits only on layers
``>= first_lora_layer``, so a question's hidden states entering that layer do
not depend on the adapter and are computed once and cached to disk, as are
the document features (hidden states after ``encoder_layers`` blocks). Each
step then runs only the top blocks, forward and backward, and the LM head only
on answer positions.

Resumable: ``run_dir/ckpt/last`` is written every ``ckpt_every`` steps, on
SIGTERM/SIGINT and at ``--max-minutes``; rerunning the same command continues
from it with the same data order. ``run_dir/metrics.jsonl`` gets train and
held-out eval records (greedy answer contains the gold answer, with and
without the adapter, and the base model with the document in context);
``run_dir/metrics.png`` plots them. ``ckpt/best`` keeps the best eval.
Runs unchanged on CUDA (``--device cuda``).

The recipe itself lives in :mod:`pipelines.d2l.trainer`; this file is the CLI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.d2l.trainer import TrainConfig, train
from pipelines.training import interpreter as _interpreter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML or JSON recipe config")
    parser.add_argument("--run-dir", type=Path, required=True, help="checkpoints, cache, metrics (resumes if present)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this many minutes of training in this call "
                        "(caching and baselines before it not counted)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: config)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="warm start from this D2L checkpoint folder (override train.init_from; fresh runs only)")
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config)
    if args.steps is not None:
        config = config.model_copy(update={"steps": args.steps})
    if args.init_from is not None:
        config = config.model_copy(update={"init_from": args.init_from})
    summary = train(config, args.run_dir, device=args.device, max_minutes=args.max_minutes, threads=args.threads,
                    command=shlex.join([_interpreter(), *sys.argv]))  # fmt: skip
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
