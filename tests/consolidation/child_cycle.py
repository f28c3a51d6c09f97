"""TEST CODE: one sleep cycle in a child process, for the kill -9 tests (``AGENT_SLEEP_FAULT`` set by the parent).

    python -m tests.consolidation.child_cycle TMP DB_URL MODEL_DIR [SELECTION_JSON]

``SELECTION_JSON``: the test planner's selection (e.g. ``{"candidates": ["sft_frozen", "sft"]}``); the test
generators of ``conftest`` are registered first.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(tmp: str, db_url: str, model_dir: str, selection: str = "{}") -> int:
    import json

    import torch

    torch.set_num_threads(1)
    from agent_sleep.consolidation.cycle import run_cycle
    from agent_sleep.models.loader import load_base_model
    from tests.consolidation.conftest import AGENT, fast_config, make_world, register_test_generators
    from tests.consolidation.planner import simple_planner

    register_test_generators()
    world = make_world(Path(tmp), db_url, Path(model_dir), load_base_model(model_dir))
    config = fast_config(selection=json.loads(selection)) if selection != "{}" else fast_config()
    result = run_cycle(AGENT, config=config, runtime=world.runtime, planner=simple_planner)
    print(result.model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:5]))
