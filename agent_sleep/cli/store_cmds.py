"""CLI for the experience store: init, episodes, log export/import, feedback, documents.

Bad arguments are usage errors (exit 2) caught before the database opens: a
time that is neither ISO 8601 nor an age, a ``--limit`` below 1, a feedback
``--score`` outside [0, 1] (0 bad, 1 good; NaN and infinities refused), a
``feedback`` with nothing to record, a blank ``--correction`` or ``--instruction``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent_sleep.cli.common import (
    UsageError,
    add_json_flag,
    agent_hint,
    finite_float,
    iso_utc,
    positive_int,
    print_json,
    read_document_file,
    score,
    settings_from,
)

# store.records.EPISODE_STATUSES, spelled out so that building the parser imports no SQLAlchemy (a test compares)
EPISODE_STATUSES = ("running", "completed", "error", "interrupted")


def _store(args: argparse.Namespace, migrate: bool = False):  # type: ignore[no-untyped-def]
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    return ExperienceStore(settings=settings, migrate=migrate)


def when(text: str) -> datetime:
    """``type=`` for ``--since``/``--until``: an ISO timestamp (naive = UTC) or an age such as 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use ISO 8601 like 2026-11-28T10:00 or an age like 12h, 7d)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def cmd_init(args: argparse.Namespace) -> int:
    from agent_sleep.store import engine as eng

    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = _store(args, migrate=True)
    rev = eng.current_revision(store.engine)
    if args.json:
        print_json({"data_dir": str(settings.data_dir.resolve()), "database": store.safe_url, "schema": rev})
        return 0
    print(f"data dir   {settings.data_dir.resolve()}")
    print(f"database   {store.safe_url} (schema {rev})")
    return 0


def _episode_query(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from agent_sleep.store import EpisodeQuery

    return EpisodeQuery(
        agent=args.agent, since=args.since, until=args.until, status=args.status,
        outcome=args.outcome, min_score=args.min_score, max_score=args.max_score,
        unconsolidated=args.unconsolidated, limit=args.limit, newest_first=getattr(args, "newest_first", False),
        episode_ids=getattr(args, "episode", None) or None,
    )


def cmd_episodes_list(args: argparse.Namespace) -> int:
    store = _store(args)
    eps = store.episodes(_episode_query(args))
    if args.json:
        for ep in eps:
            print_json(ep)
        return 0
    if not eps:
        print("no episodes match" + agent_hint(store, args.agent) if _filtered(args) else "no episodes logged yet")
        return 0
    print(f"{'EPISODE':32}  {'AGENT':14} {'STARTED (UTC)':19}  {'STATUS':9} {'EVENTS':>6} {'SCORE':>5}  OUTCOME")
    for ep in eps:
        score = "" if ep.mean_score is None else f"{ep.mean_score:.2f}"
        print(f"{ep.id:32}  {ep.agent[:14]:14} {ep.started_at:%Y-%m-%d %H:%M:%S}  {ep.status:9} "
              f"{ep.n_events:>6} {score:>5}  {ep.outcome or ''}")
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    """Whether a list command was given any filter (so "none match" rather than "none yet")."""
    return any(getattr(args, name, None) not in (None, False, []) for name in _FILTERS)


def cmd_episodes_show(args: argparse.Namespace) -> int:
    store = _store(args)
    ep = store.get_episode(args.episode)
    events, feedback = store.events(ep.id), store.feedback(ep.id)
    calls = store.model_calls(ep.id) if args.model_calls else []
    if args.json:
        out = {"episode": ep, "events": events, "feedback": feedback}
        if args.model_calls:
            out["model_calls"] = [dataclasses.asdict(c) for c in calls]
        print_json(out)
        return 0
    print(f"episode {ep.id}  agent={ep.agent}  thread={ep.thread_id}  status={ep.status}  outcome={ep.outcome}")
    print(f"started {iso_utc(ep.started_at)}  ended {iso_utc(ep.ended_at) if ep.ended_at else '-'}")
    for e in events:
        label = e.kind + (f"[{e.name}]" if e.name else "")
        extra = f"  tool_calls={e.payload['tool_calls']}" if e.payload.get("tool_calls") else ""
        if isinstance(e.payload.get("model_input"), dict):
            extra += f"  (model saw {len(e.payload['model_input'].get('messages') or [])} messages)"
        print(f"  {e.seq:>3} {label:28} {e.content[:200]!s}{extra}")
    for c in calls:
        print(f"  model call answered at seq {c.seq}: {len(c.messages)} messages, "
              f"{len(c.tools or [])} tools{'' if c.complete else ' (incomplete)'}")
        for m in c.messages:
            content = m.get("data", {}).get("content")
            print(f"      {m.get('type', '?'):>9}: {str(content)[:160]}")
    for f in feedback:
        print(f"  feedback ({f.source}) score={f.score} label={f.label} comment={f.comment}"
              + (f"\n    correction: {f.correction[:400]}" if f.correction else "")
              + (f"\n    instruction: {f.instruction[:400]}" if f.instruction else ""))
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    given = (args.score, args.label, args.comment, args.correction, args.instruction)
    if all(v is None for v in given) and not args.outcome:
        raise UsageError("nothing to record: give --score, --label, --comment, --correction, --instruction and/or "
                         "--outcome")
    if args.correction is not None and not args.correction.strip():
        raise UsageError("--correction must not be blank: give the right answer")
    if args.instruction is not None and not args.instruction.strip():
        raise UsageError("--instruction must not be blank: say how the agent should behave from now on")
    store = _store(args)
    episode_id = store.resolve_episode_id(args.episode)  # any spelling; an unknown id fails before any write
    fid = None
    if any(v is not None for v in given):
        fid = store.add_feedback(episode_id, score=args.score, label=args.label, comment=args.comment,
                                 source=args.source, correction=args.correction,
                                 instruction=args.instruction)  # fmt: skip
    if args.outcome:
        store.record_outcome(episode_id, args.outcome)
    if args.json:
        print_json({"feedback_id": fid, "episode_id": episode_id, "score": args.score, "label": args.label,
                    "comment": args.comment, "correction": args.correction, "instruction": args.instruction,
                    "source": args.source if fid else None,
                    "outcome": args.outcome})
    elif fid is not None:
        print(fid)
    else:
        print(f"outcome of {episode_id} is now {args.outcome!r}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from agent_sleep.store.jsonl import export_jsonl

    store = _store(args)
    query = _episode_query(args)
    if args.output in (None, "-"):
        n = export_jsonl(store, sys.stdout, query)
    else:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            n = export_jsonl(store, fh, query)
        tmp.replace(out)
    print(f"exported {n} records", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from agent_sleep.store.jsonl import read_import, write_import

    # The whole file is checked before the database is opened, so a bad file changes nothing.
    batch = read_import(args.file, max_payload_bytes=settings_from(args).max_payload_bytes)
    rep = write_import(_store(args, migrate=True), batch)
    if args.json:
        print_json({"episodes": rep.episodes, "events": rep.events, "feedback": rep.feedback,
                    "documents": rep.documents, "skipped": rep.skipped})
        return 0
    print(f"imported {rep.episodes} episodes, {rep.events} events, {rep.feedback} feedback, {rep.documents} documents"
          f"; {rep.skipped} already present, skipped")
    return 0


def cmd_docs_add(args: argparse.Namespace) -> int:
    from agent_sleep.store.records import check_text

    path = Path(args.path)
    text = check_text(read_document_file(path, settings_from(args)), f"document {path}")
    doc = _store(args, migrate=True).add_document(args.source or str(path), text, title=args.title, agent=args.agent)
    if args.json:
        print_json(_document_json(doc))
        return 0
    print(f"{doc.source} v{doc.version} sha256:{doc.content_hash[:16]} ({len(doc.content):,} chars)")
    return 0


def _document_json(doc) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """A document without its text (which can be megabytes): what a script needs to find it again."""
    out = doc.model_dump(exclude={"content"})
    out["chars"] = len(doc.content)
    return out


def cmd_docs_list(args: argparse.Namespace) -> int:
    docs = _store(args).documents(agent=args.agent, latest_only=not args.all_versions)
    if args.json:
        for d in docs:
            print_json(_document_json(d))
        return 0
    if not docs:
        print(f"no documents for agent {args.agent!r}" if args.agent else "no documents stored")
        return 0
    for d in docs:
        print(f"{d.source:40} v{d.version:<3} {d.created_at:%Y-%m-%d %H:%M}  {len(d.content):>8,} chars  "
              f"{'consolidated' if d.consolidated_at else ''}")
    return 0


_FILTERS = ("agent", "since", "until", "status", "outcome", "min_score", "max_score", "unconsolidated", "limit",
            "episode")  # fmt: skip


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", help="only this agent's episodes")
    p.add_argument("--since", type=when, metavar="TIME", help="started at or after TIME: ISO 8601 (naive = UTC) "
                   "or an age such as 30m, 12h, 7d")  # fmt: skip
    p.add_argument("--until", type=when, metavar="TIME", help="started before TIME (ISO 8601 or an age)")
    p.add_argument("--status", choices=list(EPISODE_STATUSES), help="only episodes in this state")
    p.add_argument("--outcome", help="only episodes with this outcome label")
    p.add_argument("--min-score", type=finite_float, metavar="S", help="mean feedback score at least S")
    p.add_argument("--max-score", type=finite_float, metavar="S", help="mean feedback score at most S")
    p.add_argument("--unconsolidated", action="store_true", help="only episodes not yet consolidated")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N episodes")
    p.add_argument("--episode", action="append", metavar="ID",
                   help="only this episode (repeatable; 32 hex digits or a dashed UUID, any case)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create the data directory and database, apply migrations",
                       description="Create the data directory and the database, and apply the schema migrations.")
    add_json_flag(p, "print the data dir, database URL (password hidden) and schema revision as JSON")
    p.set_defaults(handler=cmd_init)

    ep = sub.add_parser("episodes", help="list and show logged episodes")
    ep_sub = ep.add_subparsers(dest="episodes_command", metavar="ACTION", required=True, title="actions")
    p = ep_sub.add_parser("list", help="list episodes, oldest first")
    _query_args(p)
    p.add_argument("--newest-first", action="store_true", help="newest episodes first")
    add_json_flag(p, "one JSON object per episode and line")
    p.set_defaults(handler=cmd_episodes_list)
    p = ep_sub.add_parser("show", help="show one episode with its events and feedback")
    p.add_argument("episode", help="episode id (32 hex digits or a dashed UUID, any case)")
    add_json_flag(p, "one JSON object: episode, events, feedback (and model_calls)")
    p.add_argument("--model-calls", action="store_true",
                   help="also show the exact input (messages, tools) of every model call")
    p.set_defaults(handler=cmd_episodes_show)

    p = sub.add_parser("feedback", help="record feedback (score, label, comment, correction, instruction) or an "
                       "outcome", description="Record feedback for an episode, from any process at any later time. "
                       "Give at least one of --score, --label, --comment, --correction, --instruction or --outcome. "
                       "A correction is the right answer where the agent answered wrong: a consolidation run trains "
                       "on the conversation with it in place of the wrong answer, or holds it out as a test "
                       "question. An instruction is how the agent should behave from now on, in every "
                       "conversation: a consolidation run makes it part of the description of the agent's dialog "
                       "skill, which t2l turns into an adapter (compared by the gate with sft on the same "
                       "test questions).")  # fmt: skip
    p.add_argument("episode", help="episode id (32 hex digits or a dashed UUID, any case)")
    p.add_argument("--score", type=score, metavar="S", help="how good the episode was, from 0 (bad) to 1 (good)")
    p.add_argument("--label", help="a short label, e.g. thumbs_up (at most 64 characters)")
    p.add_argument("--comment", help="free text")
    p.add_argument("--correction", metavar="TEXT", help="the right answer, where the agent's final answer was wrong")
    p.add_argument("--instruction", metavar="TEXT",
                   help="how the agent should behave from now on, e.g. 'always ask for the order number first'")
    p.add_argument("--outcome", help="also set the episode's outcome label, e.g. resolved")
    p.add_argument("--source", choices=["human", "automatic", "evaluator"], default="human",
                   help="who gave the feedback (default: human)")
    add_json_flag(p, "print the feedback id and what was recorded as JSON")
    p.set_defaults(handler=cmd_feedback)

    lg = sub.add_parser("log", help="export or import the experience log as JSONL")
    lg_sub = lg.add_subparsers(dest="log_command", metavar="ACTION", required=True, title="actions")
    p = lg_sub.add_parser("export", help="write episodes (with events, feedback) and documents as JSONL")
    _query_args(p)
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    p.set_defaults(handler=cmd_export)
    p = lg_sub.add_parser("import", help="read a JSONL export; all or nothing, existing ids skipped and not counted")
    p.add_argument("file", help="a JSONL file written by 'log export'")
    add_json_flag(p, "print the counts as JSON")
    p.set_defaults(handler=cmd_import)

    dc = sub.add_parser("documents", help="add and list knowledge documents")
    dc_sub = dc.add_subparsers(dest="documents_command", metavar="ACTION", required=True, title="actions")
    p = dc_sub.add_parser("add", help="store a document (new content under the same source = new version)")
    p.add_argument("path", help="a UTF-8 text file; a symlink is followed, FIFOs and devices are refused; "
                   "at most $AGENT_SLEEP_MAX_DOCUMENT_BYTES (default 10 MB)")  # fmt: skip
    p.add_argument("--source", help="stable name of the source (default: the path)")
    p.add_argument("--title", help="a title to show with the document")
    p.add_argument("--agent", help="the agent the document belongs to")
    add_json_flag(p, "print the stored version (without its text) as JSON")
    p.set_defaults(handler=cmd_docs_add)
    p = dc_sub.add_parser("list", help="list documents (the latest version of each source)")
    p.add_argument("--agent", help="only this agent's documents")
    p.add_argument("--all-versions", action="store_true", help="every version, not only the latest")
    add_json_flag(p, "one JSON object per document and line (without its text)")
    p.set_defaults(handler=cmd_docs_list)
