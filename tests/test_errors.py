"""The one exception tree: the drawing in errors.py matches the classes, and errors raised on purpose are in it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from agent_sleep import errors
from agent_sleep.errors import (
    AgentSleepError,
    InvalidInputError,
    MissingDependencyError,
    NotFoundError,
    PathExistsError,
    UnsupportedModelError,
)

_BRANCH = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)\b")


def _drawn_tree() -> dict[str, str | None]:
    """Name -> parent name, parsed from the box drawing in errors.py's docstring."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ")]
    assert lines and lines[0].strip() == "AgentSleepError", "the tree must start at AgentSleepError"
    parents: dict[str, str | None] = {"AgentSleepError": None}
    path = ["AgentSleepError"]
    for line in lines[1:]:
        m = _BRANCH.match(line)
        assert m, f"cannot read tree line {line!r}"
        depth = len(m["indent"]) // 4 + 1
        assert depth <= len(path), f"{m['name']} is indented deeper than any parent"
        del path[depth:]
        name = m["name"]
        assert name not in parents, f"{name} is drawn twice"
        parents[name] = path[-1]
        path.append(name)
    return parents


def test_every_error_class_is_drawn_under_its_parent() -> None:
    drawn = _drawn_tree()
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, AgentSleepError) and cls.__module__ == errors.__name__
    }
    assert set(defined) - set(drawn) == set(), "classes missing from the drawing in errors.py"
    for name, cls in defined.items():
        if cls is AgentSleepError:
            continue
        # Drawn under its first agent-sleep base; other bases (ValueError, InvalidInputError...) are extra.
        first = next(b for b in cls.__bases__ if issubclass(b, AgentSleepError))
        assert drawn[name] == first.__name__, f"{name} is drawn under {drawn[name]}, defined under {first.__name__}"


def test_builtin_bases_keep_old_except_clauses_working() -> None:
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(PathExistsError, FileExistsError)
    assert issubclass(UnsupportedModelError, TypeError)
    assert issubclass(MissingDependencyError, ImportError)


def test_recorder_refuses_a_bad_agent_name_with_a_tree_error() -> None:
    from agent_sleep.capture.recorder import ExperienceRecorder

    for bad in ("", "x" * 65):
        with pytest.raises(InvalidInputError, match="invalid agent name .*: use 1-64 characters"):
            ExperienceRecorder(bad)


def test_backbone_refuses_a_model_without_decoder_layers() -> None:
    from agent_sleep.generators.backbone import run_blocks

    with pytest.raises(UnsupportedModelError, match="no .model.layers") as info:
        run_blocks(torch.nn.Linear(2, 2), torch.zeros(1, 3, 2), torch.ones(1, 3), 0, 1)
    assert isinstance(info.value, TypeError)


def test_hypernet_config_contradictions_are_invalid_input() -> None:
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet

    base = dict(base_model_id="m", base_content_hash="0" * 64, hidden_size=16, d_in=24, d_out=16, layers=[0])
    with pytest.raises(InvalidInputError, match="divisible by n_heads"):
        HyperNet(HyperConfig(**base, latent_dim=15, n_heads=2))
    with pytest.raises(InvalidInputError, match="needs b_head='copy'"):
        HyperNet(HyperConfig(**base, a_head="induction"))


def test_checkpoint_is_never_overwritten_unless_asked(tmp_path: Path) -> None:
    from agent_sleep.generators.checkpoint import WEIGHTS_FILE, read_checkpoint_config, save_checkpoint
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet

    config = HyperConfig(base_model_id="m", base_content_hash="0" * 64, hidden_size=16, d_in=24, d_out=16,
                         layers=[0], rank=2, latent_dim=16, n_latents=2, n_heads=2, n_blocks=1)  # fmt: skip
    dest = save_checkpoint(HyperNet(config), tmp_path / "ckpt", version="a")
    before = (dest / WEIGHTS_FILE).read_bytes()
    with pytest.raises(PathExistsError, match="checkpoint folder .* already exists") as info:
        save_checkpoint(HyperNet(config), dest, version="b")
    assert isinstance(info.value, FileExistsError)
    assert (dest / WEIGHTS_FILE).read_bytes() == before and read_checkpoint_config(dest)["version"] == "a"
    save_checkpoint(HyperNet(config), dest, version="c", overwrite=True)
    assert read_checkpoint_config(dest)["version"] == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old folder left behind
