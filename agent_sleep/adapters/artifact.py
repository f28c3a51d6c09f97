"""Adapter folders on disk: write them atomically, read them back safely, expose their LoRA layers.

A folder is a standard PEFT LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors``, loadable unchanged by
``peft.PeftModel.from_pretrained`` and vLLM) plus ``manifest.json``
(:class:`~agent_sleep.adapters.manifest.AdapterManifest`). Versions are
immutable: a folder appears whole in one rename and is never overwritten.

A plain PEFT folder (``save_pretrained`` output, no manifest) is adopted by
:func:`adopt_peft_folder` once its modules are checked against a loaded base
model. What is registered is checked harder than what is merely read:
:func:`inspect_adapter` refuses symlinks and special files anywhere in the
folder and parses the safetensors header (dtypes, byte ranges, LoRA keys and
shapes), so garbage is refused when it is added, not when it is deployed.

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
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pydantic import ValidationError

from agent_sleep.adapters.lora_config import check_lora_config, complete_lora_config, lora_pairs, module_scaling
from agent_sleep.adapters.manifest import (
    FORMAT_VERSION,
    AdapterManifest,
    AdapterSources,
    BaseModelRef,
    GeneratorInfo,
    RoutingSpec,
    check_name,
)
from agent_sleep.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterFormatError,
    IncompatibleAdapterError,
    InvalidInputError,
    PathExistsError,
    TamperedAdapterError,
)
from agent_sleep.fsutil import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.models.loader import BaseModelHandle

# AdapterManifest and check_name live in .manifest (no tensors there) and are re-exported here.
__all__ = [
    "CONFIG_FILE", "MANIFEST_FILE", "PART_MARK", "WEIGHTS_FILE", "AdapterArtifact", "AdapterManifest",
    "LoraWeights", "adopt_peft_folder", "check_name", "copy_plain_file", "inspect_adapter", "lora_layers",
    "read_adapter", "read_manifest", "save_peft_adapter", "set_routing", "write_adapter",
]  # fmt: skip

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"
PICKLE_FILE = "adapter_model.bin"
# Temp folders are ".<name>.part-<pid>-<hex>" beside the destination: hidden, and easy to spot as debris.
PART_MARK = ".part-"
# safetensors dtypes a LoRA may be stored in, with their sizes in bytes.
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


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


def set_routing(folder: str | Path, routing: RoutingSpec | None) -> AdapterManifest:
    """Put ``routing`` into an adapter folder's manifest (None removes it), replacing the file atomically.

    The weights, and so the manifest's hash of them, are untouched; writing the same spec twice is a no-op
    on the result. Raises AdapterFormatError for a folder without a readable manifest."""
    path = Path(folder) / MANIFEST_FILE
    manifest = _load_manifest(path).model_copy(update={"routing": routing})
    atomic_write_text(path, json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> AdapterManifest | None:
    """An adapter folder's manifest (None: it has none). Reads only ``manifest.json``, without hashing the weights:
    for a folder whose integrity is checked elsewhere (:func:`inspect_adapter`, :func:`read_adapter`)."""
    path = Path(folder) / MANIFEST_FILE
    return _load_manifest(path) if path.is_file() else None


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


def open_plain_file(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file itself: never through a symlink, never a FIFO or device."""
    # O_NOFOLLOW and fstat on the opened descriptor: nothing can be swapped in between the check and the read.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if path.is_symlink():
            raise AdapterFormatError(f"{path} is a symbolic link; an adapter is copied from plain files only") from None
        raise AdapterFormatError(f"cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdapterFormatError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def copy_plain_file(src: Path, dest: Path) -> str:
    """Copy regular file ``src`` (see :func:`open_plain_file`) to a new file ``dest``, fsynced; its sha256."""
    digest = hashlib.sha256()
    with open_plain_file(src) as fin, dest.open("xb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _check_plain_tree(path: Path) -> None:
    # A symlink (say adapter_model.safetensors -> /etc/passwd) would copy whatever it points at into the
    # registry; a FIFO would hang the copy. Folders are plain files and subfolders, or they are refused.
    pending = [path]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                where = Path(entry.path)
                if entry.is_symlink():
                    raise AdapterFormatError(
                        f"{where} is a symbolic link; an adapter folder to register must hold plain files only "
                        "(copy it first, e.g. cp -rL, to resolve links)"
                    )
                if entry.is_dir(follow_symlinks=False):
                    pending.append(where)
                elif not entry.is_file(follow_symlinks=False):
                    raise AdapterFormatError(f"{where} is not a regular file (a FIFO, socket or device)")


@dataclass(frozen=True)
class _HeaderTensor:
    """A tensor as the safetensors header describes it: enough for the key and shape checks of ``lora_pairs``."""

    shape: tuple[int, ...]

    def dim(self) -> int:
        return len(self.shape)


def _parse_header(raw: bytes, data_size: int, where: Path) -> dict[str, _HeaderTensor]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterFormatError(f"{where} is not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{where} is not a safetensors file: its header is not a JSON object")
    spans: list[tuple[int, int]] = []
    tensors: dict[str, _HeaderTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        info = info if isinstance(info, dict) else {}
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _FLOAT_DTYPES:
            raise AdapterFormatError(
                f"{where}: tensor {name!r} has dtype {dtype!r}; LoRA weights are {', '.join(_FLOAT_DTYPES)}"
            )
        ints = (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                      for x in v))  # fmt: skip
        if not ints(shape) or not ints(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_size:
            raise AdapterFormatError(f"{where}: tensor {name!r} has a malformed shape or byte range in the header")
        if offsets[1] - offsets[0] != math.prod(shape) * _FLOAT_DTYPES[dtype]:
            raise AdapterFormatError(f"{where}: tensor {name!r} has {offsets[1] - offsets[0]} bytes for shape {shape}")
        spans.append((offsets[0], offsets[1]))
        tensors[name] = _HeaderTensor(tuple(shape))
    position = 0
    for begin, end in sorted(spans):  # the data must be covered exactly once, as safetensors requires
        if begin != position:
            raise AdapterFormatError(f"{where}: tensors overlap or leave a gap at byte {position} of the data")
        position = end
    if position != data_size:
        raise AdapterFormatError(f"{where}: {data_size - position} bytes after the last tensor")
    return tensors


def _scan_weights(path: Path) -> tuple[str, dict[str, _HeaderTensor]]:
    """sha256 of the file and its tensors' shapes, from a strict parse of the safetensors header."""
    digest = hashlib.sha256()
    with open_plain_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, _MAX_HEADER):
            raise AdapterFormatError(f"{path} is not a safetensors file (no valid header length)")
        raw = fh.read(length)
        digest.update(head + raw)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), _parse_header(raw, size - 8 - length, path)


def inspect_adapter(path: str | Path, *, manifest: AdapterManifest | None = None
                    ) -> tuple[dict[str, Any], AdapterManifest]:  # fmt: skip
    """(adapter_config, manifest) of a complete, untampered adapter folder, without loading tensors.

    The same checks as :func:`read_adapter` with ``verify=True`` (the weights are
    hashed in a stream and their safetensors header is parsed: float dtypes, byte
    ranges that cover the data exactly, PEFT LoRA keys with shapes and ranks the
    config agrees with), so code that files adapters away needs no torch. Also
    refuses symlinks and special files anywhere in the folder, since what passes
    here gets copied. ``manifest`` stands in for a missing ``manifest.json`` (a
    plain PEFT folder, see :func:`adopt_peft_folder`).
    """
    path = Path(path)
    _check_folder(path, require_manifest=manifest is None)
    _check_plain_tree(path)
    config, found = _read_metadata(path, require_manifest=manifest is None)
    if manifest is not None and found is not None:
        raise AdapterFormatError(f"adapter folder {path} has its own {MANIFEST_FILE}; register it as it is")
    manifest = manifest or found
    assert manifest is not None
    sha, shapes = _scan_weights(path / WEIGHTS_FILE)
    _verify(manifest, config, path, sha)
    lora_pairs(cast("dict[str, Tensor]", shapes), where=path / WEIGHTS_FILE, config=config)
    return config, manifest


def adopt_peft_folder(path: str | Path, handle: BaseModelHandle, *, description: str | None = None) -> AdapterManifest:
    """The manifest a plain PEFT LoRA folder (``save_pretrained`` output, no ``manifest.json``) gets for ``handle``.

    A PEFT folder names its base model only by ``base_model_name_or_path``, a
    name; what can be checked is that every module it changes is a Linear of the
    loaded model whose in/out features fit A and B (IncompatibleAdapterError
    otherwise). The manifest then records the loaded model (``handle.spec`` and
    its content hash), generator ``imported``/``peft`` and the original folder in
    ``sources``. Nothing is written: pass the manifest to
    ``AdapterRegistry.register(folder, skill, manifest=...)``, which refuses the
    folder if its weights change in between.
    """
    from agent_sleep.adapters.stack import resolve_linear

    path = Path(path)
    artifact = read_adapter(path, require_manifest=False)
    if artifact.manifest is not None:
        raise AdapterFormatError(f"adapter folder {path} already has {MANIFEST_FILE}; register it as it is")
    problems = []
    for module, (a, b) in sorted(lora_pairs(artifact.tensors, where=path, config=artifact.lora_config).items()):
        try:
            linear = resolve_linear(handle.model, module)
        except AdapterError as exc:
            problems.append(str(exc))
            continue
        if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            problems.append(f"{module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, but the layer is "
                            f"{linear.out_features}x{linear.in_features} (out x in)")  # fmt: skip
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise IncompatibleAdapterError(
            f"adapter folder {path} does not fit base model {handle.spec!r}: {'; '.join(problems[:3])}{more}"
        )
    sha, _ = _scan_weights(path / WEIGHTS_FILE)
    config = artifact.lora_config
    targets = config["target_modules"]
    origin = str(path.resolve())
    return AdapterManifest(
        generator=GeneratorInfo(name="imported", version="peft", peft_version=config.get("peft_version")),
        base_model=BaseModelRef(id=handle.spec, content_hash=handle.content_hash),
        rank=int(config["r"]),
        lora_alpha=float(config["lora_alpha"]),
        target_modules=[targets] if isinstance(targets, str) else list(targets),
        sources=AdapterSources(description=description or f"PEFT adapter imported from {origin}", folder=origin,
                               base_model_name_or_path=config.get("base_model_name_or_path")),  # fmt: skip
        weights_sha256=sha,
    )


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
