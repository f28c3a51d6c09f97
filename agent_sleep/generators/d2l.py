"""Doc-to-LoRA: internalise a document into a standard PEFT LoRA adapter in one forward pass.

The frozen base model encodes the document (its first ``encoder_layers``
blocks only), a trained :class:`~agent_sleep.generators.hypernet.HyperNet`
maps the activations to a rank-r LoRA on the target layers. Long documents
are split into chunks of ``chunk_tokens``; each chunk yields a rank-r LoRA
and the K LoRAs are concatenated along the rank (effective rank r*K, i.e.
their deltas add up; plus r for the learned bias block when the checkpoint
has one, ``use_bias``). Chunks are streamed a few at a time, so memory is
bounded by ``chunk_batch`` chunks plus the growing adapter itself. With a
chunk gate (``chunk_gate``), chunks whose gate is below ``min_gate`` (default:
the checkpoint's ``min_gate``, set when meta-training taught the gate to tell
fact chunks from filler) are left out, so a long document's filler neither
drowns the chunk that matters nor costs rank; the best chunk is always kept.
On filler the gate was not trained on it may stay open for every chunk, so at
most ``max_kept`` chunks (default :data:`DEFAULT_MAX_KEPT`), those with the
highest gates, go into one adapter (:func:`keep_chunks`). With ``sections`` on (the sleep cycle turns it on
when it routes ``d2l`` adapters), a document that would lose chunks to that cap keeps every chunk that passes
``min_gate`` instead, each chunk a routed section of the adapter keyed by its own sentences
(:class:`~agent_sleep.adapters.manifest.RoutedSection`): a question then reads only the chunk it resembles, plus
the bias block. On documents of 12 needle chunks back to back: capped at 4 chunks 6 % of the questions, every
chunk summed 11 %, routed to one chunk 78 % (``evals/results/niah_dense_needles_route.md``).

Several documents (:meth:`D2LGenerator.internalize_documents`; what ``generate`` does with a request of
several, which the sleep cycle sends for a skill whose globs match several documents): each document is
chunked and gated on its own and all kept chunks go into ONE adapter along rank, the bias block once, as
meta-training builds adapters of several chunks. Measured (``evals/bench_d2l_multi.py``, 16 nights of 3
held-out documents, committed checkpoint; ``evals/results/d2l_multi.md``), share of each document's solo
accuracy kept, synthetic facts / prose-like: this adapter 72 % / 48 %; the texts joined into one document
(what the cycle did before; chunks straddle documents) 57 % / 28 %; the solo adapters stacked at weight 1
(the bias block counted 3 times) 11 % / 10 %, at weight 1/3 59 % / 28 %; the solo adapters each routed by
its document's sentences (MiniLM, threshold 0.55) 98 % / 84 % (5 a night: this adapter 53 % / 34 %, routed
93 % / 78 %; ``d2l_multi5.md``). Scaling the documents' chunk deltas (0.6-1.25) does not rescue this adapter:
the documents interfere. So one adapter per document, routed, is the
better way to learn several documents in a night, and the cycle's way for documents no declared skill takes
(``skills.per_document`` and ``CycleConfig.routing``, both on for d2l by default); this merge is the best
single adapter, for a declared skill whose documents must be one. (Unrouted, each D2L adapter in a stack
adds its own bias block: that, not the documents' content, is what sinks the weight-1 stack.)

The PEFT export sets ``lora_alpha = scale * r_total`` so that
``PeftModel.from_pretrained`` applies exactly the in-memory delta
``scale * B @ A``. Refused, with nothing written or registered: empty,
whitespace-only, binary or non-UTF-8 documents (InvalidInputError /
EncodingError), documents over ``max_chunks`` (PayloadTooLargeError), a
checkpoint trained for other base weights (IncompatibleAdapterError) and
non-finite generated weights (AdapterError).

:class:`D2LGenerator` is a :class:`~agent_sleep.interfaces.Generator` (registry name ``d2l``):
``generate`` takes a request's documents (one adapter of them all), ``write`` makes the PEFT folder.
:func:`internalize_to_registry` registers the result as a *candidate* version;
only a deploy makes it live. Internalising what was internalised before (same
skill, document bytes, hypernetwork weights and version, base model and
options: :func:`reuse_key`) returns the existing version instead of a new one
with identical weights (:func:`find_internalized`).

Not here: training the hypernetwork (``pipelines/d2l``), deciding whether an
adapter is good (evaluation) or live (registry, runtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.errors import (
    AdapterError,
    InvalidInputError,
    PayloadTooLargeError,
)
from agent_sleep.generators.result import GeneratedAdapter
from agent_sleep.store.records import check_text

if TYPE_CHECKING:
    from torch import Tensor

    from agent_sleep.adapters.manifest import RoutedSection
    from agent_sleep.config import Settings
    from agent_sleep.generators.hypernet import HyperNet
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.models.loader import BaseModelHandle
    from agent_sleep.registry.records import AdapterVersionRecord
    from agent_sleep.registry.registry import AdapterRegistry

__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_MAX_KEPT", "GENERATOR_NAME", "ChunkLoras", "D2LGenerator", "Internalized",
           "check_document", "find_internalized", "internalize_to_registry", "keep_chunks", "reuse_key"]  # fmt: skip

GENERATOR_NAME = "d2l"
# At most this many chunks (those the gate ranks highest) go into one adapter. Measured on training filler
# styles only (evals/results/niah_*.md): on 32k-token needle haystacks recall was best at 2-4 kept chunks and fell
# at 8 and 16 (the summed deltas of the extra chunks drown the needle); on documents of 8 needle chunks back to
# back, keeping 4 answered 2 of 8 questions, keeping all of them 1. The committed checkpoint was meta-trained on
# adapters of at most 7 chunks. Documents of up to 4 chunks (~1,000 tokens) are not affected; 0 = no cap.
DEFAULT_MAX_KEPT = 4
# How a d2l adapter is routed (RoutingSpec): the sleep cycle's defaults (consolidation.config.RoutingSettings) and
# what write() puts in a sectioned adapter's manifest, so `internalize --sections` serves as the cycle would. A
# question about a page is worded less like its sentences than a corrected conversation's is like its questions
# (0.45, not the 0.55 of other adapters); one that names the page's invented organisation gets 0.1 more.
ROUTING_THRESHOLD = 0.45
ROUTING_NAME_BONUS = 0.1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "d2l-smollm2-135m"
_PEFT_PREFIX = "base_model.model."


def check_document(text: str | bytes) -> str:
    """The document as text, or a clear error: bytes must be UTF-8; empty, whitespace-only and binary are refused."""
    if isinstance(text, memoryview):
        text = bytes(text)
    if not isinstance(text, (str, bytes, bytearray)):
        raise InvalidInputError(f"the document must be str or bytes, not {type(text).__name__}")
    if ("\x00" if isinstance(text, str) else b"\x00") in text:
        raise InvalidInputError("the document looks binary (it contains NUL bytes); D2L needs text")
    text = check_text(text, "the document")  # the store's one UTF-8 rule (EncodingError names the byte)
    if not text.strip():
        raise InvalidInputError("the document is empty or whitespace-only; nothing to internalise")
    control = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if control > max(8, len(text) // 20):
        raise InvalidInputError("the document looks binary (NUL or many control characters); D2L needs text")
    return text


@dataclass(frozen=True, eq=False)
class Internalized(GeneratedAdapter):
    """A D2L adapter in memory; ``layers`` keeps the unscaled (A, B) per module for applying it in place."""

    tokens: int
    document_sha256: str
    dropped: int  # chunks left out because their gate was below min_gate (``chunks`` counts the kept ones)
    scale: float
    layers: dict[str, tuple[Tensor, Tensor]] = field(repr=False)  # module -> (A [R, in], B [out, R]), unscaled
    reused: bool = False  # read back from a registered version (find_internalized), not generated now
    document_sha256s: tuple[str, ...] = ()  # each document's sha256, in order (empty when read back: reused)
    sections: tuple[RoutedSection, ...] = ()  # each kept chunk's rank rows and sentences (``sections`` on, capped)
    # when chunks were left out: the kept chunks' sentences, what to route the adapter by (a long document's first
    # sentences may all lie in dropped chunks); empty: route by the documents' own sentences
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ChunkLoras:
    """Every chunk's LoRA and gate for one document, before selection (:meth:`D2LGenerator.encode_chunks`)."""

    a: Tensor = field(repr=False)  # [K, L, r, in]
    b: Tensor = field(repr=False)  # [K, L, out, r], already multiplied by the gate
    gates: Tensor  # [K], all ones without a chunk gate
    tokens: int
    document_sha256: str
    seconds: float


def keep_chunks(gates: Tensor, *, min_gate: float, max_kept: int = 0) -> Tensor:
    """Which chunks an adapter keeps: gate >= ``min_gate``, at most ``max_kept`` of them (0: no cap), the highest
    gates first (ties: the earlier chunk), and always the chunk with the highest gate. A bool mask over ``gates``.

    The cap is for documents the gate cannot tell apart from filler (issue #14: on a 36k-token narrative haystack
    the gate kept all 144 chunks and the needle drowned in their summed deltas): the adapter then holds the
    ``max_kept`` chunks the gate ranks highest instead of everything.
    """
    import torch

    keep = gates >= min_gate
    keep[int(gates.argmax())] = True
    if max_kept and int(keep.sum()) > max_kept:
        order = torch.argsort(torch.where(keep, gates, torch.full_like(gates, -1.0)), descending=True, stable=True)
        keep = torch.zeros_like(keep)
        keep[order[:max_kept]] = True
    return keep


class D2LGenerator:
    """A loaded hypernetwork bound to its base model; :meth:`load`, then :meth:`internalize` and :meth:`write`.

    ``chunk_tokens``, ``min_gate``, ``max_kept`` and ``sections`` are the defaults of :meth:`internalize` (and so
    of :meth:`generate`).
    """

    name = GENERATOR_NAME
    separate_documents = True  # the sleep cycle hands over a skill's documents one by one (see generate)

    def __init__(self, net: HyperNet, handle: BaseModelHandle, *, checkpoint: Path, version: str,
                 chunk_tokens: int = 256, min_gate: float | None = None, max_kept: int = DEFAULT_MAX_KEPT,
                 sections: bool = False) -> None:  # fmt: skip
        self.net = net
        self.handle = handle
        self.checkpoint = checkpoint
        self.version = version
        self.config = net.config
        self.chunk_tokens = chunk_tokens
        self.min_gate = min_gate
        self.max_kept = max_kept
        self.sections = sections
        self._lora: Any = None

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, handle: BaseModelHandle | None = None,
             settings: Settings | None = None, chunk_tokens: int = 256, min_gate: float | None = None,
             max_kept: int = DEFAULT_MAX_KEPT, sections: bool = False) -> D2LGenerator:  # fmt: skip
        """Load a checkpoint (default: the committed SmolLM2 one) for ``handle`` (default: its base model).

        IncompatibleAdapterError if the checkpoint was trained for other base weights.
        """
        from agent_sleep.generators.checkpoint import (
            load_checkpoint,
            read_checkpoint_config,
        )

        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        config = read_checkpoint_config(path)
        if handle is None:
            from agent_sleep.models.loader import load_base_model

            handle = load_base_model(config["hyper"]["base_model_id"], settings=settings)
        net = load_checkpoint(path, content_hash=handle.content_hash, device=handle.device)
        return cls(net, handle, checkpoint=path, version=str(config.get("version", "0")), chunk_tokens=chunk_tokens,
                   min_gate=min_gate, max_kept=max_kept, sections=sections)  # fmt: skip

    # -- generation -------------------------------------------------------------------------------
    def _chunks(self, ids: list[int], chunk_tokens: int) -> list[list[int]]:
        return [ids[i : i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]

    def generate(self, request: GenerationRequest) -> Internalized:
        """The request's documents as ONE adapter, with this generator's defaults: one document is
        :meth:`internalize`; several are :meth:`internalize_documents` (rank-concatenated, bias block once).

        D2L reads documents only, in one forward pass: the request's other fields are not used.
        """
        if len(request.documents) == 1:
            return self.internalize(request.documents[0])
        if not request.documents:
            raise InvalidInputError(f"generator {self.name!r} internalises documents; the request has none")
        return self.internalize_documents(request.documents)

    def internalize(self, text: str | bytes, *, chunk_tokens: int | None = None, chunk_batch: int = 8,
                    max_chunks: int | None = 1024, min_gate: float | None = None,
                    max_kept: int | None = None, sections: bool | None = None) -> Internalized:  # fmt: skip
        """Turn ``text`` into an adapter: one rank-r LoRA per chunk of ``chunk_tokens``, concatenated along rank.

        ``chunk_tokens`` defaults to the generator's (256 unless set). ``min_gate`` (default: the
        generator's, else the checkpoint's): leave out chunks whose gate is below it (chunk-gated
        checkpoints only; the chunk with the highest gate is always kept). ``max_kept`` (default: the
        generator's, :data:`DEFAULT_MAX_KEPT`; 0 = no cap): of the chunks that pass ``min_gate``, keep at most
        this many, those with the highest gates (:func:`keep_chunks`). ``sections`` (default: the generator's):
        instead of capping, keep every chunk that passes ``min_gate``, each a routed section (result
        ``sections``; only the adapter's router uses them, so write them into a routed manifest).
        """
        return self.internalize_documents([text], chunk_tokens=chunk_tokens, chunk_batch=chunk_batch,
                                          max_chunks=max_chunks, min_gate=min_gate, max_kept=max_kept,
                                          sections=sections)  # fmt: skip

    def internalize_documents(self, texts: Sequence[str | bytes], *, chunk_tokens: int | None = None,
                              chunk_batch: int = 8, max_chunks: int | None = 1024, min_gate: float | None = None,
                              max_kept: int | None = None, sections: bool | None = None) -> Internalized:  # fmt: skip
        """Several documents as ONE adapter: each document chunked on its own (no chunk straddles two), each
        document's chunks selected on their own (:func:`keep_chunks`: every document keeps its best chunk and at
        most ``max_kept``), then all kept chunks of all documents concatenated along rank in document order, plus
        the bias block once, as meta-training builds an adapter of several chunks. One document gives exactly
        :meth:`internalize`'s tensors.

        ``max_chunks`` bounds the chunks of all documents together. ``document_sha256`` is the document's
        sha256 for one document; for several, the sha256 of their sha256s (hex, one a line), each in
        ``document_sha256s``. With ``sections`` (see :meth:`internalize`), when some document would lose chunks
        to ``max_kept``, every document keeps every chunk that passes ``min_gate`` and each kept chunk is a section.
        """
        if isinstance(texts, (str, bytes, bytearray, memoryview)):
            raise InvalidInputError("internalize_documents takes a sequence of documents, not one; see internalize")
        from agent_sleep.adapters.manifest import RoutedSection

        threshold, cap = self._selection(min_gate, max_kept)
        sectioned = self.sections if sections is None else bool(sections)
        parts, texts_of = [], []
        for text, ids, chunks in self._prepare(texts, chunk_tokens, max_chunks):
            loras = self._encode(text, ids, chunks, chunk_batch)
            parts.append((loras, keep_chunks(loras.gates, min_gate=threshold, max_kept=cap)))
            texts_of.append(chunks)
        sectioned = sectioned and cap > 0 and any(int(keep_chunks(lo.gates, min_gate=threshold).sum()) > cap
                                                  for lo, _ in parts)  # fmt: skip
        if sectioned:
            parts = [(lo, keep_chunks(lo.gates, min_gate=threshold)) for lo, _ in parts]
        dropped = any(not bool(keep.all()) for _, keep in parts)
        if not (sectioned or dropped):  # every chunk kept, one block: routed by the documents' own sentences
            return self._assemble(parts)
        kept = [self._chunk_keys(chunk, i) for i, chunk in enumerate(  # each kept chunk's sentences
            chunk for (_, keep), chunks in zip(parts, texts_of, strict=True)
            for chunk, k in zip(chunks, keep.tolist(), strict=True) if k)]  # fmt: skip
        r = self.config.rank
        routed = tuple(RoutedSection(start=i * r, stop=(i + 1) * r, keys=keys) for i, keys in enumerate(kept)) \
            if sectioned else ()  # fmt: skip
        keys = tuple(dict.fromkeys(k for ks in kept for k in ks)) if dropped else ()
        return self._assemble(parts, sections=routed, keys=keys)

    def _chunk_keys(self, ids: list[int], i: int) -> list[str]:
        """A kept chunk's routing keys: its sentences (its text if it has none of three words)."""
        from agent_sleep.key_terms import sentences

        text = self.handle.tokenizer.decode(ids, skip_special_tokens=True)
        return sentences(text) or [text.strip() or f"chunk {i + 1}"]

    def _prepare(self, texts: Sequence[str | bytes], chunk_tokens: int | None,
                 max_chunks: int | None) -> list[tuple[str, list[int], list[list[int]]]]:  # fmt: skip
        """Each document checked, tokenised and cut into chunks (``(text, ids, chunks)``), or a clear error: a bad
        or token-less document, or more than ``max_chunks`` chunks in all."""
        docs = [check_document(t) for t in texts]
        if not docs:
            raise InvalidInputError("no documents; nothing to internalise")
        chunk_tokens = self._chunk_size(chunk_tokens)
        ids_of = [self.handle.tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]
        for i, ids in enumerate(ids_of):
            if not ids:
                of = "" if len(docs) == 1 else f" {i + 1} of {len(docs)}"
                raise InvalidInputError(f"the document{of} has no tokens; nothing to internalise")
        chunked = [self._chunks(ids, chunk_tokens) for ids in ids_of]
        total = sum(len(c) for c in chunked)
        if max_chunks is not None and total > max_chunks:
            what = f"the document has {len(ids_of[0])} tokens" if len(docs) == 1 else \
                f"the {len(docs)} documents have {sum(len(i) for i in ids_of)} tokens"  # fmt: skip
            raise PayloadTooLargeError(
                f"{what} = {total} chunks of {chunk_tokens}, over max_chunks="
                f"{max_chunks}; raise chunk_tokens or max_chunks, or split the document"
            )
        return list(zip(docs, ids_of, chunked, strict=True))

    def _selection(self, min_gate: float | None, max_kept: int | None) -> tuple[float, int]:
        """The effective (min_gate, max_kept) of a call, or InvalidInputError."""
        min_gate = self.min_gate if min_gate is None else min_gate
        threshold = self.config.min_gate if min_gate is None else min_gate
        if not 0.0 <= threshold < 1.0:
            raise InvalidInputError(f"min_gate must be in [0, 1), got {threshold!r}")
        cap = self.max_kept if max_kept is None else max_kept
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise InvalidInputError(f"max_kept must be a non-negative integer (0 = no cap), got {cap!r}")
        return float(threshold), cap

    def _chunk_size(self, chunk_tokens: int | None) -> int:
        chunk_tokens = self.chunk_tokens if chunk_tokens is None else chunk_tokens
        if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise InvalidInputError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
        return chunk_tokens

    def encode_chunks(self, text: str | bytes, *, chunk_tokens: int | None = None, chunk_batch: int = 8,
                      max_chunks: int | None = 1024) -> ChunkLoras:  # fmt: skip
        """Every chunk's LoRA and gate, before any is left out (what :meth:`internalize` selects from)."""
        ((doc, ids, chunks),) = self._prepare([text], chunk_tokens, max_chunks)
        return self._encode(doc, ids, chunks, chunk_batch)

    def _encode(self, text: str, ids: list[int], chunks: list[list[int]], chunk_batch: int) -> ChunkLoras:
        import torch

        from agent_sleep.generators.backbone import hidden_after, pad_ids

        start = time.perf_counter()
        c = self.config
        model = self.handle.model
        device = next(model.parameters()).device
        a_parts: list[Tensor] = []
        b_parts: list[Tensor] = []
        gates: list[Tensor] = []
        with torch.inference_mode():
            for i in range(0, len(chunks), chunk_batch):  # stream: only chunk_batch chunks of activations at once
                input_ids, mask = pad_ids(chunks[i : i + chunk_batch], device)
                feats = hidden_after(model, input_ids, mask, c.encoder_layers)
                out = self.net.explain(feats.float(), mask.bool())
                a, b, gate = out.a, out.b, out.gate
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    raise AdapterError(
                        f"the D2L hypernetwork {self.checkpoint} produced non-finite LoRA weights; nothing written"
                    )
                a_parts.append(a.float().cpu())
                b_parts.append(b.float().cpu())
                gates.append(gate.float().cpu() if gate is not None else torch.ones(len(input_ids)))
        return ChunkLoras(a=torch.cat(a_parts), b=torch.cat(b_parts), gates=torch.cat(gates), tokens=len(ids),
                          document_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                          seconds=time.perf_counter() - start)  # fmt: skip

    def assemble(self, chunks: ChunkLoras, keep: Tensor) -> Internalized:
        """One adapter from the chunks ``keep`` (a bool mask over ``chunks``) selects, concatenated along rank."""
        return self._assemble([(chunks, keep)])

    def _assemble(self, parts: Sequence[tuple[ChunkLoras, Tensor]], sections: tuple[RoutedSection, ...] = (),
                  keys: tuple[str, ...] = ()) -> Internalized:  # fmt: skip
        """One adapter of the kept chunks of one or more documents, in order, plus the bias block once."""
        import torch

        start = time.perf_counter()
        c = self.config
        a_all = torch.cat([loras.a[keep] for loras, keep in parts])  # [K, L, r, in]
        b_all = torch.cat([loras.b[keep] for loras, keep in parts])  # [K, L, out, r]
        with torch.no_grad():  # all chunks along rank (+ the bias block once): [L, R, in], [L, out, R]
            a_cat, b_cat = self.net.concat_chunks(a_all, b_all)
        k, rank = a_all.shape[0], a_cat.shape[1]
        layers: dict[str, tuple[Tensor, Tensor]] = {}
        tensors: dict[str, Tensor] = {}
        for li, module in enumerate(c.module_names()):
            layers[module] = (a_cat[li].contiguous(), b_cat[li].contiguous())
            tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = layers[module][0]
            tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = layers[module][1]
        lora_config = {"r": rank, "lora_alpha": c.scale * rank, "target_modules": c.module_names(),
                       "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}  # fmt: skip
        shas = tuple(loras.document_sha256 for loras, _ in parts)
        combined = shas[0] if len(shas) == 1 else hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest()
        return Internalized(
            tensors=tensors, lora_config=lora_config, chunks=k, rank=rank, tokens=sum(lo.tokens for lo, _ in parts),
            seconds=sum(lo.seconds for lo, _ in parts) + time.perf_counter() - start, scale=c.scale, layers=layers,
            dropped=sum(int((~keep).sum()) for _, keep in parts), document_sha256=combined, document_sha256s=shas,
            sections=sections, keys=keys,
        )  # fmt: skip

    @contextlib.contextmanager
    def applied(self, internalized: Internalized) -> Iterator[None]:
        """Run the base model with ``internalized`` applied in memory (this context only) - no files, no PEFT."""
        from agent_sleep.generators.backbone import RowLora

        if self._lora is None:
            self._lora = RowLora(self.handle.model, self.config.module_names())
        device = next(self.handle.model.parameters()).device
        weights = {m: (a.to(device)[None], b.to(device)[None]) for m, (a, b) in internalized.layers.items()}
        with self._lora.use(weights, internalized.scale):
            yield

    # -- output -----------------------------------------------------------------------------------
    def write(self, internalized: Internalized, dest: str | Path, *, sources: Mapping[str, Any] | None = None,
              skill: str | None = None) -> Path:  # fmt: skip
        """Write a standard PEFT adapter folder (plus manifest) at ``dest``; see ``adapters.artifact.write_adapter``.
        A sectioned result's manifest is routed (default threshold, no group; keys: each section's first sentence)
        with its ``sections``; whoever routes it may replace the rest of the spec but should keep those. The kept
        chunks' sentences are ``generator.routing_keys``: what to route the adapter by (a long document's first
        sentences may all be in chunks the gate left out; written only when chunks were left out)."""
        from agent_sleep.adapters.artifact import write_adapter
        from agent_sleep.adapters.manifest import (
            AdapterManifest,
            AdapterSources,
            BaseModelRef,
            GeneratorInfo,
            RoutingSpec,
        )

        src = dict(sources or {})
        docs = list(src.pop("documents", []))
        if not docs:  # a caller without document ids: name the documents by their sha256
            docs = list(internalized.document_sha256s or (internalized.document_sha256,))
        elif internalized.document_sha256 not in docs:
            docs.append(internalized.document_sha256)
        several = {"document_sha256s": list(internalized.document_sha256s)} \
            if len(internalized.document_sha256s) > 1 else {}  # fmt: skip
        manifest = AdapterManifest(
            skill=skill,
            generator=GeneratorInfo(
                name=GENERATOR_NAME, version=self.version, chunks=internalized.chunks, tokens=internalized.tokens,
                checkpoint=self.checkpoint.name, dropped=internalized.dropped,
                document_sha256=internalized.document_sha256, **several,
                **({"routing_keys": list(internalized.keys)} if internalized.keys else {}),
            ),
            base_model=BaseModelRef(id=self.config.base_model_id, content_hash=self.config.base_content_hash),
            sources=AdapterSources(documents=docs, **src),
            routing=RoutingSpec(keys=list(dict.fromkeys(s.keys[0] for s in internalized.sections)),
                                threshold=ROUTING_THRESHOLD, name_bonus=ROUTING_NAME_BONUS, group=GENERATOR_NAME,
                                sections=list(internalized.sections)) if internalized.sections else None,
        )
        return write_adapter(dest, internalized.tensors, internalized.lora_config, manifest)


def reuse_key(generator: D2LGenerator, text: str | bytes, *, chunk_tokens: int | None = None,
              min_gate: float | None = None, max_kept: int | None = None) -> str:  # fmt: skip
    """A sha256 naming everything that decides the adapter ``generator.internalize(text, ...)`` makes.

    The document's bytes, the hypernetwork (its version, config and weights: versions alone are not
    unique, tests and experiments reuse them), the base model's content hash and the effective
    ``chunk_tokens``, ``min_gate`` and ``max_kept``. Stored as ``sources.reuse_key`` of each version it registers.
    """
    from agent_sleep.generators.checkpoint import weights_sha256

    text = check_document(text)
    threshold, cap = generator._selection(min_gate, max_kept)
    payload = {
        "generator": GENERATOR_NAME, "version": generator.version, "hypernet_sha256": weights_sha256(generator.net),
        "config": generator.config.model_dump(mode="json"), "base_content_hash": generator.handle.content_hash,
        "document_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "chunk_tokens": generator.chunk_tokens if chunk_tokens is None else chunk_tokens,
        "min_gate": threshold, "max_kept": cap, **({"sections": True} if generator.sections else {}),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def find_internalized(registry: AdapterRegistry, name: str, key: str, *,
                      generator: D2LGenerator) -> tuple[AdapterVersionRecord, Internalized] | None:  # fmt: skip
    """The newest version of skill ``name`` registered with reuse ``key``, read back as an :class:`Internalized`.

    None when there is none, or when its folder is missing or damaged here (then a new version is made).
    The result has ``reused=True``; its ``seconds`` is the time to read it back.
    """
    from agent_sleep.adapters.lora_config import lora_pairs
    from agent_sleep.generators.reuse import reusable_versions

    start = time.perf_counter()
    for record, artifact in reusable_versions(registry, name, GENERATOR_NAME, key):
        info = (artifact.manifest.generator.model_extra or {}) if artifact.manifest is not None else {}
        if any(info.get(k) is None for k in ("chunks", "tokens", "dropped", "document_sha256")):
            continue
        pairs = lora_pairs(artifact.tensors, where=artifact.path, config=artifact.lora_config)
        result = Internalized(
            tensors=artifact.tensors, lora_config=artifact.lora_config, chunks=int(info["chunks"]), rank=record.rank,
            seconds=time.perf_counter() - start, tokens=int(info["tokens"]), dropped=int(info["dropped"]),
            document_sha256=str(info["document_sha256"]), scale=generator.config.scale, layers=dict(pairs),
            reused=True,
        )  # fmt: skip
        return record, result
    return None


def internalize_to_registry(registry: AdapterRegistry, text: str | bytes, name: str, *,
                            chunk_tokens: int | None = None, source: str | None = None,
                            generator: D2LGenerator | None = None,
                            description: str | None = None) -> tuple[AdapterVersionRecord, Internalized]:  # fmt: skip
    """Internalise ``text`` and register it as the next version of skill ``name``; nothing registered on error.

    The version is a *candidate* (status and alias ``candidate``): nothing here makes it live or moves
    the skill's ``live`` alias; a deploy (``AdapterRegistry.deploy``, ``LiveRuntime.deploy``) does.
    If the same document was internalised into ``name`` before with the same generator and options
    (:func:`reuse_key`), that version is returned instead, with ``result.reused`` True.
    """
    from agent_sleep.adapters.manifest import check_name

    check_name(name)
    gen = generator or D2LGenerator.load()
    key = reuse_key(gen, text, chunk_tokens=chunk_tokens)
    found = find_internalized(registry, name, key, generator=gen)
    if found is not None:
        return found
    result = gen.internalize(text, chunk_tokens=chunk_tokens)
    sources: dict[str, Any] = {"description": description or (f"D2L of {source}" if source else None),
                               "reuse_key": key}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="d2l-") as tmp:
        folder = gen.write(result, Path(tmp) / name, sources=sources, skill=name)
        record = registry.register(folder, name, description=description, kind=GENERATOR_NAME)
    return record, result
