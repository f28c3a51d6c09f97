"""Hypernetwork checkpoints on disk: ``hypernet.safetensors`` + a config file, written atomically.

One layout for every hypernetwork generator; a :class:`CheckpointFormat` says
which (its config file name, format tag, config and network classes): D2L's
(``d2l_config.json``, :data:`D2L`, the default of every function here) and
T2L's (``t2l_config.json``, ``agent_sleep.generators.t2l_net.T2L_FORMAT``).
The config names the base model id *and* its content hash; loading for
other base weights raises :class:`~agent_sleep.errors.IncompatibleAdapterError`
(the adapters it would emit would silently mean nothing). Non-finite weights
are refused on load. Training state (optimizer, step) is the recipe's business
and lives elsewhere (``pipelines/d2l/meta_train.py``, ``pipelines/t2l/meta_train.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_sleep.errors import AdapterFormatError, IncompatibleAdapterError, PathExistsError
from agent_sleep.fsutil import atomic_dir
from agent_sleep.generators.hypernet import HyperConfig, HyperNet

__all__ = ["CONFIG_FILE", "D2L", "FORMAT", "WEIGHTS_FILE", "CheckpointFormat", "load_checkpoint",
           "read_checkpoint_config", "save_checkpoint"]  # fmt: skip

CONFIG_FILE = "d2l_config.json"
WEIGHTS_FILE = "hypernet.safetensors"
FORMAT = "agent-sleep-d2l-hypernet"


@dataclass(frozen=True)
class CheckpointFormat:
    """Which hypernetwork a checkpoint folder holds: ``label`` (in messages), the ``format`` tag stored in the
    config and the weights' metadata, the ``config_file`` name, and the classes that rebuild it (``config_cls``,
    a pydantic model under the config's ``hyper`` key; ``net_cls``, built from it)."""

    label: str
    format: str
    config_file: str
    config_cls: Any
    net_cls: Any


D2L = CheckpointFormat("D2L", FORMAT, CONFIG_FILE, HyperConfig, HyperNet)


def weights_sha256(net: Any) -> str:
    """A sha256 of a network's state (names, dtypes, shapes and values): what its outputs depend on.

    Versions alone are not unique (tests and experiments reuse them), so reuse keys hash the weights; ~10 MB
    takes milliseconds, and it is computed each time because a training loop may change them.
    """
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.float().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(net: Any, dest: str | Path, *, version: str, dtype: Any = None,
                    extra: dict[str, Any] | None = None, overwrite: bool = False,
                    fmt: CheckpointFormat = D2L) -> Path:  # fmt: skip
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
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": fmt.format})
        config = {"format": fmt.format, "format_version": 1, "version": version,
                  "hyper": net.config.model_dump(mode="json"), **(extra or {})}  # fmt: skip
        (tmp / fmt.config_file).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~mask)  # safetensors writes 0600; others must read a shipped file
    return dest


def read_checkpoint_config(path: str | Path, *, fmt: CheckpointFormat = D2L) -> dict[str, Any]:
    """The parsed config (``d2l_config.json`` for D2L) of checkpoint folder ``path``; AdapterFormatError if missing
    or malformed."""
    file = Path(path) / fmt.config_file
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterFormatError(f"{path} is not a {fmt.label} checkpoint: {fmt.config_file} is missing") from exc
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"cannot read {file}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != fmt.format or "hyper" not in config:
        raise AdapterFormatError(f"{file} is not a {fmt.format} config")
    return config


def load_checkpoint(path: str | Path, *, content_hash: str | None, device: Any = "cpu", dtype: Any = None,
                    fmt: CheckpointFormat = D2L) -> Any:  # fmt: skip
    """Load a hypernetwork; refuse it (IncompatibleAdapterError) if it was trained for another base model.

    ``content_hash`` is the loaded base model's; ``None`` skips the check
    (inspection only, never for generating adapters).
    """
    import torch
    from safetensors.torch import load_file

    config = read_checkpoint_config(path, fmt=fmt)
    hyper = fmt.config_cls.model_validate(config["hyper"])
    if content_hash is not None and hyper.base_content_hash != content_hash:
        raise IncompatibleAdapterError(
            f"{fmt.label} checkpoint {path} was trained for base model {hyper.base_model_id!r} "
            f"(content hash {hyper.base_content_hash[:12]}...), but the loaded base model has content hash "
            f"{content_hash[:12]}...; train or pick a checkpoint for this model"
        )
    try:
        state = load_file(str(Path(path) / WEIGHTS_FILE))
    except (OSError, Exception) as exc:  # safetensors raises its own SafetensorError
        raise AdapterFormatError(f"cannot read {Path(path) / WEIGHTS_FILE}: {exc}") from exc
    bad = [k for k, v in state.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise AdapterFormatError(f"{fmt.label} checkpoint {path} has non-finite weights in {bad[:3]}")
    net = fmt.net_cls(hyper)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise AdapterFormatError(f"{fmt.label} checkpoint {path} does not match its config: {exc}") from exc
    net.to(device=device, dtype=dtype or torch.float32)
    net.eval()
    net.requires_grad_(False)
    return net
