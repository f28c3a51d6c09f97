"""One sleep cycle for one agent, as a script: select -> generate -> evaluate -> deploy.

    .venv/bin/python pipelines/sleep/run_cycle.py --agent helpdesk --config pipelines/sleep/cycle.yaml

The stages live in ``agent_sleep.consolidation`` (see this folder's README for what each one reads and
writes); this recipe only wires them to a database, a config and a terminal. A scheduler calls
``run_cycle`` the same way, and resumes a run by passing its id as ``resume``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", required=True, help="the agent to consolidate")
    parser.add_argument("--config", type=Path, help="cycle config (YAML); default: every setting's default")
    parser.add_argument("--resume", metavar="RUN", help="continue this unfinished run")
    parser.add_argument("--data-dir", type=Path, help="data directory (default: $AGENT_SLEEP_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared 2-core box)")
    args = parser.parse_args(argv)

    from agent_sleep.config import get_settings
    from agent_sleep.consolidation import load_cycle_config, run_cycle
    from agent_sleep.store import ExperienceStore

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    # 1. Where experiences, adapters and runs live (SQLite in the data dir unless AGENT_SLEEP_DATABASE_URL says).
    store = ExperienceStore(settings=get_settings(data_dir=args.data_dir))
    # 2. What this cycle may do: selection rules, generator budgets, suite sizes, the gate's policy, a time budget.
    config = load_cycle_config(args.config)
    try:
        # 3. The cycle. Each stage's result is in SQL before the next starts, so a killed run resumes.
        result = run_cycle(args.agent, config=config, store=store, resume=args.resume,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        store.close()

    # 4. How it ended; the report in the run folder has the per-skill table and the gate's numbers.
    print(f"{result.outcome}: {result.deployed_stack or 'nothing deployed'}"
          + (f" ({result.error})" if result.error else ""))
    for skill in result.skills:
        print(f"  {skill.skill}: {skill.adapter or '-'} {skill.status}")
    if result.folder:
        print(f"report: {result.folder}/report.md")
    return {"promoted": 0, "no_signal": 0, "skipped_overlap": 0, "rejected_by_gate": 3}.get(result.outcome, 1)


if __name__ == "__main__":
    raise SystemExit(main())
