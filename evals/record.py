"""Where a benchmark's results go: one JSON record and, for benches that make one, its Markdown table beside it
(same name, ``.md``), each written whole or not at all (a run killed mid-write leaves the previous file); a
diagnostic probe's command line (:func:`probe_parser`) and Markdown page headed by the command that made it
(:func:`write_probe`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent_sleep.fsutil import atomic_write_json, atomic_write_text

__all__ = ["probe_parser", "scratch_database", "write_probe", "write_results"]


def write_results(out: str | Path, record: dict[str, Any], *, markdown: str | None = None) -> Path:
    """Write ``record`` as indented JSON to ``out`` (folders made; values JSON cannot hold written as ``str``) and
    ``markdown``, if given, to ``out`` with suffix ``.md``; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record, indent=2, sort_keys=False, default=str)
    if markdown is not None:
        atomic_write_text(out.with_suffix(".md"), markdown.rstrip("\n") + "\n")
    return out


def probe_parser(description: str, *, pages: bool = False) -> argparse.ArgumentParser:
    """The options every D2L probe takes (``--model``, ``--threads``, ``--out``) and, with ``pages``, the page folder
    (default: the hand-written VALIDATION set, never ``evals/docs*``) and one ``--checkpoint`` (default: the
    committed one); the probe adds its own."""
    parser = argparse.ArgumentParser(description=description)
    if pages:
        from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT

        root = Path(__file__).resolve().parents[1]
        parser.add_argument("--docs", type=Path, default=root / "pipelines" / "d2l" / "written" / "validation")
        parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    return parser


def write_probe(script: str, argv: list[str] | None, seconds: float, body: str, out: str | Path | None, *,
                detail: str = "") -> str:
    """A probe's page: the command that ran it (``script`` under ``evals/`` with ``argv``, default the process's),
    its duration (and ``detail``) in one line, then ``body``; printed, and written whole to ``out`` if given."""
    import sys

    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python", f"evals/{script}", *given])
    text = f"`{command}` ({seconds:.0f} s{'; ' + detail if detail else ''})\n\n{body.rstrip()}\n"
    print(text)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return text


@contextmanager
def scratch_database(url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``url`` (named ``prefix`` + a random suffix), yielded as
    a URL, and dropped afterwards (connections forced closed) however the block ends."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
