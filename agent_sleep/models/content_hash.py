"""Content hashes of model weights, cached in a sidecar JSON beside them.

Later stages tag every adapter with the hash of the base it was trained on, so
the hash depends only on the weight bytes: the same on every machine and after
every reload. Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from agent_sleep.errors import ModelError
from agent_sleep.fsutil import atomic_write_json, fresh_name

# The old name, still imported by agent_sleep.models.loader.
write_json_atomic = atomic_write_json

__all__ = ["SIDECAR", "fresh_name", "model_content_hash", "read_sidecar", "weight_files", "write_json_atomic"]

logger = logging.getLogger(__name__)

SIDECAR = "agent_sleep_model.json"
# Bump if the hashing scheme changes, so cached hashes from the old scheme are ignored.
_HASH_SCHEME = "sha256-safetensors-v1"


def weight_files(folder: Path) -> list[Path]:
    """The weight files the content hash covers, sorted by name."""
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.name)
    # Old checkpoints without safetensors still need a distinct identity.
    return files or sorted(folder.glob("*.bin"), key=lambda p: p.name)


def read_sidecar(folder: Path) -> dict[str, Any]:
    """The folder's sidecar as a dict ({} when missing or unreadable)."""
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_content_hash(folder: Path) -> str:
    """sha256 over the folder's weight files (sorted by name; name, size and bytes of each).

    Depends only on the bytes, so it is the same on every machine. The result is
    cached in the sidecar under the files' sizes and mtimes, so a later load
    costs a stat() instead of reading hundreds of MB.
    """
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise ModelError(f"model folder {folder} has no *.safetensors (or *.bin) weight files")
    stats = [(p.name, p.stat()) for p in files]
    key = [[name, st.st_size, st.st_mtime_ns] for name, st in stats]
    sidecar = read_sidecar(folder)
    cached = sidecar.get("hash_cache")
    if isinstance(cached, dict) and cached.get("scheme") == _HASH_SCHEME and cached.get("key") == key:
        return str(cached["content_hash"])

    digest = hashlib.sha256()
    for path, (name, st) in zip(files, stats, strict=True):
        digest.update(f"{name}\0{st.st_size}\0".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    content_hash = digest.hexdigest()

    sidecar["hash_cache"] = {"scheme": _HASH_SCHEME, "key": key, "content_hash": content_hash}
    try:
        atomic_write_json(folder / SIDECAR, sidecar)
    except OSError as exc:  # a read-only folder only costs us the cache
        logger.debug("could not cache content hash in %s: %s", folder, exc)
    return content_hash
