"""Adapter folders on disk: write them atomically, read them back safely, expose their LoRA layers.

A folder is a standard PEFT LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors``, loadable unchanged by
``peft.PeftModel.from_pretrained`` and vLLM) plus ``manifest.json``
(:class:`~agent_sleep.adapters.manifest.AdapterManifest`). Versions are
immutable: a folder appears whole in one rename and is never overwritten.

Only plain LoRA on linear layers is accepted: DoRA, ``modules_to_save``,
trained biases, embedding LoRA, base-modifying initialisations (PiSSA, OLoRA,
CorDA, LoftQ) and pickle weights are refused with the option named, because the
runtime in :mod:`agent_sleep.adapters.stack` could not reproduce them.
This module does not decide what is live or whether an adapter is good; see
``stack`` and ``validation``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent_sleep.adapters.lora_config import check_lora_config, complete_lora_config, lora_pairs, module_scaling
from agent_sleep.adapters.manifest import FORMAT_VERSION, AdapterManifest, check_name
from agent_sleep.errors import (
    AdapterExistsError,
    AdapterFormatError,
    InvalidInputError,
    PathExistsError,
    TamperedAdapterError,
)
from agent_sleep.fsutil import atomic_dir

if TYPE_CHECKING:
    from torch import Tensor

# AdapterManifest and check_name live in .manifest (no tensors there) and are re-exported here.
__all__ = [
    "CONFIG_FILE", "MANIFEST_FILE", "PART_MARK", "WEIGHTS_FILE", "AdapterArtifact", "AdapterManifest",
    "LoraWeights", "check_name", "lora_layers", "read_adapter", "save_peft_adapter", "write_adapter",
]  # fmt: skip

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"
PICKLE_FILE = "adapter_model.bin"
# Temp folders are ".<name>.part-<pid>-<hex>" beside the destination: hidden, and easy to spot as debris.
PART_MARK = ".part-"


@dataclass(frozen=True, eq=False)
class AdapterArtifact:
    """An adapter in memory: where it lives, its PEFT config, manifest (None if absent) and CPU tensors."""

    path: Path
    lora_config: dict[str, Any]
    manifest: AdapterManifest | None
    tensors: dict[str, Tensor]

    @property
    def modules(self) -> list[str]:
        """Module paths the adapter changes, e.g. ``model.layers.0.self_attn.q_proj``."""
        return sorted(lora_pairs(self.tensors, where=self.path))


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """One LoRA layer: delta W = ``scaling * B @ A`` with A ``[r, in]`` and B ``[out, r]``."""

    A: Tensor
    B: Tensor
    scaling: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


# ---------------------------------------------------------------- writing


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with path.open("x", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")


def _write_weights(path: Path, tensors: Mapping[str, Tensor]) -> str:
    """Write safetensors and return the sha256 of the bytes on disk."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata={"format": "pt"})
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _clean_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, detached, and no two entries sharing storage (safetensors refuses aliasing)."""
    import torch

    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidInputError(f"tensor {key!r} is a {type(value).__name__}, not a torch.Tensor")
        if not value.is_floating_point():
            raise InvalidInputError(f"tensor {key!r} has dtype {value.dtype}; LoRA weights must be floating point")
        t = value.detach().to("cpu").contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if storage in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a slice of a bigger tensor (e.g. a rank block) would save the whole storage
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[key] = t
    return out


def write_adapter(
    dest: str | Path,
    tensors: Mapping[str, Tensor],
    lora_config: Mapping[str, Any],
    manifest: AdapterManifest,
) -> Path:
    """Write a complete adapter folder at ``dest`` in one rename and return its path.

    ``tensors`` are keyed PEFT-style
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``);
    ``lora_config`` needs at least ``r``, ``lora_alpha`` and ``target_modules``
    and is completed into a full PEFT ``adapter_config.json``. The manifest's
    rank, alpha, targets and ``weights_sha256`` are filled in from what is
    written. Files are fsynced inside a hidden temp folder beside ``dest``,
    which is then renamed, so readers never see a half-written adapter.
    Raises AdapterExistsError if ``dest`` exists (versions are immutable) and
    AdapterFormatError if the config or tensors are not a supported LoRA.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise AdapterExistsError(f"adapter folder {dest} already exists; adapter versions are immutable")
    config = complete_lora_config(lora_config, base_model_id=manifest.base_model.id)
    clean = _clean_tensors(tensors)
    for module in lora_pairs(clean, where=dest, config=config):
        module_scaling(config, module)  # fails early on a malformed rank/alpha pattern
    targets = config["target_modules"]
    manifest = manifest.model_copy(
        update={
            "rank": int(config["r"]),
            "lora_alpha": float(config["lora_alpha"]),
            "target_modules": [targets] if isinstance(targets, str) else list(targets),
        }
    )
    try:
        # Files are fsynced and the folder renamed into place when the block ends.
        with atomic_dir(dest, mark=PART_MARK) as tmp:
            sha = _write_weights(tmp / WEIGHTS_FILE, clean)
            _write_json(tmp / CONFIG_FILE, config)
            final = manifest.model_copy(update={"weights_sha256": sha})
            _write_json(tmp / MANIFEST_FILE, final.model_dump(mode="json"))
    except PathExistsError as exc:
        raise AdapterExistsError(f"adapter folder {dest} was created concurrently; not overwritten") from exc
    return dest


def save_peft_adapter(peft_model: Any, adapter_name: str, dest: str | Path, manifest: AdapterManifest) -> Path:
    """Export one adapter of a live ``peft.PeftModel`` as an adapter folder (see :func:`write_adapter`)."""
    from peft.utils import get_peft_model_state_dict

    if adapter_name not in getattr(peft_model, "peft_config", {}):
        raise InvalidInputError(f"the PEFT model has no adapter named {adapter_name!r}")
    config = peft_model.peft_config[adapter_name].to_dict()
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    return write_adapter(dest, state, config, manifest)


# ---------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterFormatError(f"adapter file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AdapterFormatError(f"adapter file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _check_folder(path: Path, *, require_manifest: bool) -> None:
    if path.name.startswith(".") and PART_MARK in path.name:
        raise AdapterFormatError(f"{path} is the temp folder of an unfinished adapter write, not an adapter")
    if not path.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}{PART_MARK}*")) if path.parent.is_dir() else []
        if leftovers:
            raise AdapterFormatError(
                f"adapter folder {path} does not exist; {leftovers[0].name} beside it is left over from an "
                "interrupted write (safe to delete)"
            )
        raise AdapterFormatError(f"adapter folder {path} {'is not a folder' if path.exists() else 'does not exist'}")
    if not (path / WEIGHTS_FILE).is_file() and (path / PICKLE_FILE).is_file():
        raise AdapterFormatError(
            f"adapter folder {path} has only {PICKLE_FILE} (pickle); agent-sleep never unpickles weights. "
            f"Convert it once to {WEIGHTS_FILE} in a trusted environment"
        )
    needed = [CONFIG_FILE, WEIGHTS_FILE] + ([MANIFEST_FILE] if require_manifest else [])
    for name in needed:
        if not (path / name).is_file():
            raise AdapterFormatError(f"adapter folder {path} is missing {name}")


def _load_manifest(path: Path) -> AdapterManifest:
    data = _read_json(path)
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path} has format_version {version}; this agent-sleep reads up to {FORMAT_VERSION} (upgrade it)"
        )
    try:
        return AdapterManifest.model_validate(data)
    except ValidationError as exc:
        raise AdapterFormatError(f"{path} is not a valid adapter manifest: {exc}") from exc


def _check_manifest_matches(manifest: AdapterManifest, config: Mapping[str, Any], path: Path) -> None:
    # The hash pins only the weights; a config edit (say lora_alpha x100) is as harmful, so compare too.
    targets = config.get("target_modules")
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    pairs = [("r", manifest.rank, config.get("r")), ("lora_alpha", manifest.lora_alpha, config.get("lora_alpha"))]
    pairs.append(("target_modules", sorted(manifest.target_modules), targets))
    for key, expected, found in pairs:
        if expected != found:
            raise TamperedAdapterError(
                f"{path / CONFIG_FILE} has {key}={found!r} but the manifest recorded {expected!r}"
            )


def _read_metadata(path: Path, *, require_manifest: bool) -> tuple[dict[str, Any], AdapterManifest | None]:
    _check_folder(path, require_manifest=require_manifest)
    config = _read_json(path / CONFIG_FILE)
    check_lora_config(config, where=path / CONFIG_FILE)
    manifest = _load_manifest(path / MANIFEST_FILE) if (path / MANIFEST_FILE).is_file() else None
    return config, manifest


def _verify(manifest: AdapterManifest, config: Mapping[str, Any], path: Path, actual_sha256: str) -> None:
    if actual_sha256 != manifest.weights_sha256:
        raise TamperedAdapterError(
            f"{path / WEIGHTS_FILE} has sha256 {actual_sha256[:16]}..., but the manifest recorded "
            f"{manifest.weights_sha256[:16] or '(none)'}...; the file was modified after it was written"
        )
    _check_manifest_matches(manifest, config, path)


def inspect_adapter(path: str | Path) -> tuple[dict[str, Any], AdapterManifest]:
    """(adapter_config, manifest) of a complete, untampered adapter folder, without loading tensors.

    The same checks as :func:`read_adapter` with ``verify=True`` (the weights are
    hashed in a stream), so code that only files adapters away needs no torch.
    """
    path = Path(path)
    config, manifest = _read_metadata(path, require_manifest=True)
    assert manifest is not None
    digest = hashlib.sha256()
    with (path / WEIGHTS_FILE).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    _verify(manifest, config, path, digest.hexdigest())
    return config, manifest


def read_adapter(path: str | Path, *, verify: bool = True, require_manifest: bool = True) -> AdapterArtifact:
    """Read an adapter folder into memory (tensors on CPU, never unpickled).

    With ``verify`` the weight bytes must match the manifest's sha256 and the
    config must agree with the manifest (else TamperedAdapterError). With
    ``require_manifest=False`` a plain PEFT folder without ``manifest.json``
    is accepted too and gets ``manifest=None`` (nothing to verify against).
    Raises AdapterFormatError naming the folder and file for anything missing,
    malformed or unsupported.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    config, manifest = _read_metadata(path, require_manifest=require_manifest)
    # One read serves both the hash and the tensors, so what is verified is what is loaded.
    data = (path / WEIGHTS_FILE).read_bytes()
    if verify and manifest is not None:
        _verify(manifest, config, path, hashlib.sha256(data).hexdigest())
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise AdapterFormatError(f"{path / WEIGHTS_FILE} is not a readable safetensors file: {exc}") from exc
    lora_pairs(tensors, where=path / WEIGHTS_FILE, config=config)
    return AdapterArtifact(path=path, lora_config=config, manifest=manifest, tensors=tensors)


def lora_layers(artifact: AdapterArtifact) -> dict[str, LoraWeights]:
    """Module path -> :class:`LoraWeights`, with the scaling PEFT would use for that module.

    Honours ``lora_alpha / r``, ``use_rslora`` (``alpha / sqrt(r)``) and the
    per-module ``rank_pattern`` / ``alpha_pattern``.
    """
    pairs = lora_pairs(artifact.tensors, where=artifact.path, config=artifact.lora_config)
    return {
        module: LoraWeights(A=a, B=b, scaling=module_scaling(artifact.lora_config, module))
        for module, (a, b) in sorted(pairs.items())
    }
