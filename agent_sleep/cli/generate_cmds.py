"""CLI for generators: ``agent-sleep internalize PATH --name NAME`` (Doc-to-LoRA).

Reads a text document, keeps it in the experience store as a document, turns
it into a LoRA adapter with the D2L hypernetwork (one forward pass, chunked)
and registers the adapter as the next version of skill NAME. The skill then
works like any other: ``agent-sleep ask --adapter NAME`` and
``agent-sleep deploy NAME@vN --agent A``.

Internalising a document into a skill that already holds a version made from
the same bytes, generator and options registers nothing new: that version is
reported, with ``"reused": true`` in ``--json``.

The document is checked before any model loads: a missing file, a folder, a
FIFO, device or socket (a symlink is followed to what it points to), a file
over ``AGENT_SLEEP_MAX_DOCUMENT_BYTES`` (10 MB by default), an empty file,
binary or non-UTF-8 bytes exit 1 with the problem named, and nothing is
stored or registered. So does any failure of the generator (a checkpoint for
another base model, non-finite weights, more than ``--max-chunks`` chunks).
``--min-gate`` and ``--max-kept`` choose which chunks the adapter keeps (the
learned chunk gate's threshold; a cap on their number, highest gates first).
``--sections``: a document over the cap keeps every chunk instead, each a routed
section (a question reads the chunk closest to it; the adapter is then routed).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from agent_sleep.cli.common import (
    add_json_flag,
    finite_float,
    non_negative_int,
    positive_int,
    print_adapter_next_steps,
    print_json,
    read_document_file,
    settings_from,
)
from agent_sleep.config import Settings
from agent_sleep.errors import InvalidInputError, ModelNotFoundError, PayloadTooLargeError


def read_document(path: Path, settings: Settings) -> str:
    """The file's text, or InvalidInputError naming the file and what is wrong with it."""
    from agent_sleep.generators.d2l import check_document

    raw = read_document_file(path, settings)
    try:
        return check_document(raw)
    except InvalidInputError as exc:  # EncodingError is one too
        raise type(exc)(f"document {path}: {exc}") from None


def _load_generator(args: argparse.Namespace, settings: Any) -> Any:
    from agent_sleep.generators.checkpoint import CONFIG_FILE
    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT, D2LGenerator
    from agent_sleep.models.loader import load_base_model

    if args.checkpoint is None and not (DEFAULT_CHECKPOINT / CONFIG_FILE).is_file():
        raise ModelNotFoundError(
            f"no trained D2L checkpoint at {DEFAULT_CHECKPOINT}; train one with pipelines/d2l/meta_train.py "
            "(see its config for the command) or pass --checkpoint DIR"
        )
    # The model the agent runs (what ask/deploy use), so a checkpoint trained for other weights is refused.
    handle = load_base_model(args.model or settings.model, settings=settings)
    return D2LGenerator.load(args.checkpoint, handle=handle, settings=settings, sections=args.sections)


def _find_reused(settings: Any, name: str, key: str, generator: Any) -> tuple[Any, Any] | None:
    """(record, result) of the version of ``name`` this exact internalisation made before, if any."""
    from agent_sleep.generators.d2l import find_internalized
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    store = ExperienceStore(settings=settings)
    try:
        return find_internalized(AdapterRegistry(store), name, key, generator=generator)
    finally:
        store.close()


def cmd_internalize(args: argparse.Namespace) -> int:
    from agent_sleep.adapters.manifest import check_name
    from agent_sleep.generators.d2l import reuse_key
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    check_name(args.name)
    path = Path(args.path).expanduser()
    text = read_document(path, settings)
    generator = _load_generator(args, settings)
    key = reuse_key(generator, text, chunk_tokens=args.chunk_tokens, min_gate=args.min_gate, max_kept=args.max_kept)
    reused = _find_reused(settings, args.name, key, generator)
    if reused is not None:  # the same document, generator and options: that version, not a copy of it
        record, result = reused
        documents = [d for d in record.sources.get("documents", []) if d != result.document_sha256]
        adapter_bytes = sum(f.stat().st_size for f in Path(record.path).glob("*.safetensors"))
        return _report(args, path, record, result, documents[0] if documents else None, adapter_bytes, generator)
    try:  # raises before anything is stored or registered
        result = generator.internalize(text, chunk_tokens=args.chunk_tokens, max_chunks=args.max_chunks,
                                       min_gate=args.min_gate, max_kept=args.max_kept)  # fmt: skip
    except PayloadTooLargeError as exc:
        raise PayloadTooLargeError(f"document {path}: {exc} (options --chunk-tokens, --max-chunks)") from None

    store = ExperienceStore(settings=settings)
    try:
        doc = store.add_document(str(path.resolve()), text, title=path.name, agent=args.agent,
                                 metadata={"internalized_as": args.name})  # fmt: skip
        registry = AdapterRegistry(store)
        description = args.description or f"D2L of {path.name}"
        sources = {"documents": [doc.id], "description": description, "reuse_key": key}
        with tempfile.TemporaryDirectory(prefix="d2l-") as tmp:
            folder = generator.write(result, Path(tmp) / args.name, sources=sources, skill=args.name)
            adapter_bytes = sum(f.stat().st_size for f in folder.iterdir() if f.name.endswith(".safetensors"))
            record = registry.register(folder, args.name, description=description, kind="d2l", agent=args.agent)
    finally:
        store.close()
    return _report(args, path, record, result, doc.id, adapter_bytes, generator)


def _report(args: argparse.Namespace, path: Path, record: Any, result: Any, document_id: str | None,
            adapter_bytes: int, generator: Any) -> int:  # fmt: skip
    out = {
        "name": record.skill,
        "version": record.version,
        "adapter": record.name,
        "path": record.path,
        "reused": result.reused,
        "seconds": round(result.seconds, 4),
        "chunks": result.chunks,
        "chunks_dropped": result.dropped,
        "sections": len(result.sections),
        "rank": result.rank,
        "tokens": result.tokens,
        "adapter_bytes": adapter_bytes,
        "document_sha256": result.document_sha256,
        "document_id": document_id,
        "generator": f"d2l/{generator.version}",
        "base_model_hash": record.base_model_hash,
        "agent": args.agent,
    }
    if args.json:
        print_json(out)
        return 0
    if result.reused:
        print(f"unchanged: {path.name} was internalized into {record.name} before with this generator and options; "
              "nothing new registered")  # fmt: skip
    else:
        dropped = f", {result.dropped} filler chunk(s) left out" if result.dropped else ""
        routed = ", each a routed section" if result.sections else ""
        print(f"internalized {path.name} ({result.tokens} tokens, {result.chunks} chunk(s){routed}{dropped}) into "
              f"{record.name} in {result.seconds:.2f} s")  # fmt: skip
    print_adapter_next_steps(record, result.rank, adapter_bytes, args.agent, "a question about the document")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from agent_sleep.generators.d2l import DEFAULT_MAX_KEPT  # torch-free: the CLI stays light
    p = sub.add_parser(
        "internalize",
        help="turn a text document into a LoRA adapter (Doc-to-LoRA) and register it as a skill",
        description="Internalise a UTF-8 text document into a LoRA adapter with the D2L hypernetwork and "
        "register it as the next version of skill NAME (usable with ask --adapter and deploy).",
    )
    p.add_argument("path", metavar="PATH",
                   help="a UTF-8 text file (Markdown, plain text, ...); a symlink is followed, FIFOs and devices "
                   "are refused; at most $AGENT_SLEEP_MAX_DOCUMENT_BYTES (default 10 MB)")  # fmt: skip
    p.add_argument("--name", required=True, help="skill name to register the adapter under (next version)")
    p.add_argument("--chunk-tokens", type=positive_int, default=256, metavar="N",
                   help="tokens per chunk; each chunk adds rank r to the adapter (default: 256)")
    p.add_argument("--max-chunks", type=positive_int, default=1024, metavar="K",
                   help="refuse documents of more than K chunks, i.e. an adapter above rank r*K (default: 1024)")
    p.add_argument("--min-gate", type=finite_float, default=None, metavar="G",
                   help="leave out chunks whose learned gate is below G, 0 keeps all (default: the checkpoint's)")
    p.add_argument("--max-kept", type=non_negative_int, default=None, metavar="K",
                   help="keep at most K chunks, those with the highest gates; 0 = no cap (default: "
                   f"{DEFAULT_MAX_KEPT})")  # fmt: skip
    p.add_argument("--sections", action="store_true",
                   help="a document over --max-kept chunks keeps every chunk instead, each a routed section: a "
                   "question reads only the chunk closest to it (the adapter is routed by the document's sentences)")
    p.add_argument("--agent", help="the agent that owns the document and the skill (deploy it with deploy --agent)")
    p.add_argument("--description", help="skill description (default: 'D2L of FILE')")
    p.add_argument("--checkpoint", metavar="DIR", help="D2L hypernetwork checkpoint (default: the bundled one)")
    p.add_argument("--model", help="base model (default: $AGENT_SLEEP_MODEL or smollm2-135m-instruct)")
    add_json_flag(p, "print one JSON object")
    p.set_defaults(handler=cmd_internalize, slow=lambda a: f"internalizing {Path(a.path).name} into {a.name}")


__all__ = ["cmd_internalize", "read_document", "register"]
