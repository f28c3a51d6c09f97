"""Hypernetwork checkpoints on disk: ``hypernet.safetensors`` + ``d2l_config.json``, written atomically.

The config names the base model id *and* its content hash; loading for
other base weights raises :class:`~agent_sleep.errors.IncompatibleAdapterError`
(the adapters it would emit would silently mean nothing). Non-finite weights
are refused on load. Training state (optimizer, step) is the recipe's business
and lives elsewhere (``pipelines/d2l/meta_train.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent_sleep.errors import AdapterFormatError, IncompatibleAdapterError, PathExistsError
from agent_sleep.fsutil import atomic_dir
from agent_sleep.generators.hypernet import HyperConfig, HyperNet

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "load_checkpoint", "read_checkpoint_config", "save_checkpoint"]

CONFIG_FILE = "d2l_config.json"
WEIGHTS_FILE = "hypernet.safetensors"
FORMAT = "agent-sleep-d2l-hypernet"


def save_checkpoint(net: HyperNet, dest: str | Path, *, version: str, dtype: Any = None,
                    extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:  # fmt: skip
    """Write ``net`` (cast to ``dtype``, default its own) and its config to folder ``dest`` in one rename.

    Raises PathExistsError (a FileExistsError) if ``dest`` exists, unless ``overwrite``.
    """
    import torch
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise PathExistsError(f"checkpoint folder {dest} already exists")
    with atomic_dir(dest, overwrite=overwrite) as tmp:  # an old dest is swapped out only once tmp is complete
        state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in net.state_dict().items()}
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
        if bad:
            raise AdapterFormatError(f"refusing to save a hypernetwork with non-finite weights in {bad[:3]}")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        config = {"format": FORMAT, "format_version": 1, "version": version,
                  "hyper": net.config.model_dump(mode="json"), **(extra or {})}  # fmt: skip
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~mask)  # safetensors writes 0600; others must read a shipped file
    return dest


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``d2l_config.json`` of checkpoint folder ``path``; AdapterFormatError if missing or malformed."""
    file = Path(path) / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterFormatError(f"{path} is not a D2L checkpoint: {CONFIG_FILE} is missing") from exc
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"cannot read {file}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or "hyper" not in config:
        raise AdapterFormatError(f"{file} is not a {FORMAT} config")
    return config


def load_checkpoint(path: str | Path, *, content_hash: str | None, device: Any = "cpu", dtype: Any = None) -> HyperNet:
    """Load a hypernetwork; refuse it (IncompatibleAdapterError) if it was trained for another base model.

    ``content_hash`` is the loaded base model's; ``None`` skips the check
    (inspection only, never for generating adapters).
    """
    import torch
    from safetensors.torch import load_file

    config = read_checkpoint_config(path)
    hyper = HyperConfig.model_validate(config["hyper"])
    if content_hash is not None and hyper.base_content_hash != content_hash:
        raise IncompatibleAdapterError(
            f"D2L checkpoint {path} was trained for base model {hyper.base_model_id!r} "
            f"(content hash {hyper.base_content_hash[:12]}...), but the loaded base model has content hash "
            f"{content_hash[:12]}...; train or pick a checkpoint for this model"
        )
    try:
        state = load_file(str(Path(path) / WEIGHTS_FILE))
    except (OSError, Exception) as exc:  # safetensors raises its own SafetensorError
        raise AdapterFormatError(f"cannot read {Path(path) / WEIGHTS_FILE}: {exc}") from exc
    bad = [k for k, v in state.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise AdapterFormatError(f"D2L checkpoint {path} has non-finite weights in {bad[:3]}")
    net = HyperNet(hyper)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise AdapterFormatError(f"D2L checkpoint {path} does not match its config: {exc}") from exc
    net.to(device=device, dtype=dtype or torch.float32)
    net.eval()
    net.requires_grad_(False)
    return net
