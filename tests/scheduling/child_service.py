"""TEST CODE: a scheduler process for the multi-process tests, with an injectable cycle.

    python -m tests.scheduling.child_service DB_URL DATA_DIR [--role R] [--cycle fake|real|deploy] [--model DIR]
        [--poll S] [--lease S] [--workers N] [--stage-seconds LOW,HIGH] [--stages N] [--gate FILE] [--seed N]

``--cycle fake``: :func:`tests.scheduling.fake_cycle.fake_cycle`; ``real``: ``run_cycle`` on the tiny model
given by ``--model`` with the consolidation tests' planner and fast config; ``deploy``:
:func:`tests.scheduling.deploy_cycle.deploying_cycle` on that model (a random adapter of seed ``--seed``,
deployed once ``--gate`` exists). Decision lines go to stdout.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any


def _real_cycle(model_dir: str) -> Any:
    import torch

    torch.set_num_threads(1)
    from agent_sleep.consolidation.cycle import run_cycle
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from tests.consolidation.conftest import fast_config
    from tests.consolidation.planner import simple_planner

    handle = load_base_model(model_dir)
    runtimes: dict[int, Any] = {}

    def cycle(agent: str, *, config: Any, store: Any, **kwargs: Any) -> Any:
        if id(store) not in runtimes:
            runtimes[id(store)] = LiveRuntime(AdapterRegistry(store), handle=handle, max_delta_norm=1000.0)
        return run_cycle(agent, config=fast_config(), runtime=runtimes[id(store)], planner=simple_planner, **kwargs)

    return cycle


def _deploy_cycle(model_dir: str, gate: str | None, seed: int) -> Any:
    import torch

    torch.set_num_threads(1)
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from tests.scheduling.deploy_cycle import deploying_cycle

    handle = load_base_model(model_dir)
    runtimes: dict[int, Any] = {}

    def cycle(agent: str, *, store: Any, **kwargs: Any) -> Any:
        if id(store) not in runtimes:
            runtimes[id(store)] = LiveRuntime(AdapterRegistry(store), handle=handle)
        return deploying_cycle(agent, store=store, runtime=runtimes[id(store)], seed=seed,
                               gate=Path(gate) if gate else None, **kwargs)

    return cycle


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("db_url")
    p.add_argument("data_dir")
    p.add_argument("--role", default="all")
    p.add_argument("--cycle", default="fake")
    p.add_argument("--model")
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--lease", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--stage-seconds", default="0.005,0.02")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--gate")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)

    from agent_sleep.config import Settings
    from agent_sleep.scheduling.config import SchedulerConfig
    from agent_sleep.scheduling.service import SchedulerService
    from agent_sleep.store import ExperienceStore
    from tests.scheduling.fake_cycle import fake_cycle

    if args.cycle == "real":
        cycle = _real_cycle(args.model)
    elif args.cycle == "deploy":
        cycle = _deploy_cycle(args.model, args.gate, args.seed)
    else:
        low, high = (float(x) for x in args.stage_seconds.split(","))
        cycle = functools.partial(fake_cycle, stage_seconds=(low, high), stages=args.stages)
    extra = {"model": args.model} if args.model else {}
    store = ExperienceStore(settings=Settings(data_dir=Path(args.data_dir), database_url=args.db_url, **extra))
    config = SchedulerConfig(poll_seconds=args.poll, lease_seconds=args.lease, workers=args.workers)
    service = SchedulerService(store, config, cycle=cycle, role=args.role,
                               say=lambda line: print(line, flush=True))
    if args.cycle == "deploy":  # its stage lines say when the test may open the gate
        service.worker.progress = lambda line: print(line, flush=True)
    code = service.run()
    store.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
