"""Helpers shared by the CLI command modules: one parser class, one JSON and time format, validators.

* :class:`CommandParser` is the parser of ``agent-sleep`` and of every subcommand:
  each one takes the global options (``--data-dir``, ``--db``) before or after the
  command, the value nearest the end winning, and a misspelt choice gets a
  "did you mean" on every Python version.
* :func:`print_json` writes one JSON value per line with every timestamp in one
  format, :func:`iso_utc` (UTC, ISO 8601 with offset, whole seconds).
* ``type=`` validators (:func:`positive_int`, :func:`finite_float`, :func:`score`)
  turn a bad value into argparse's usage error (exit 2); a handler raises
  :class:`UsageError` for what argparse cannot see (exit 2 too).
* :func:`status_line` tells stderr what a slow command is doing and how long it took.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import IO, Any

from agent_sleep.config import Settings, get_settings
from agent_sleep.errors import ConfigError, PayloadTooLargeError
from agent_sleep.names import did_you_mean

SCORE_RANGE = (0.0, 1.0)  # feedback scores the CLI accepts: 0 bad ... 1 good
STATUS_DELAY_S = 1.0  # a command still running after this long says so on stderr


class UsageError(ConfigError):
    """Arguments that parse but do not make a valid request; ``main`` exits 2 (bad usage)."""


# ---------------------------------------------------------------- the parser


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: a parser whose option was not given sets nothing, so a subcommand's
    # own (absent) default never clobbers a value given before the command.
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options (before or after the command)")
    group.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                       help="data directory (default: $AGENT_SLEEP_DATA_DIR or ./.agent_sleep)")
    group.add_argument("--db", dest="database_url", default=argparse.SUPPRESS, metavar="URL",
                       help="SQLAlchemy URL of the experience database "
                       "(default: $AGENT_SLEEP_DATABASE_URL or SQLite in the data dir)")  # fmt: skip
    return parent


GLOBAL_OPTIONS = _global_options()


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with the global options, and "did you mean" for a misspelt choice.

    Nested subparsers are made with the class of their parent, so every level of
    ``agent-sleep`` gets both without its module asking.
    """

    def __init__(self, *args: Any, parents: Sequence[argparse.ArgumentParser] = (), **kwargs: Any) -> None:
        if sys.version_info >= (3, 14):
            kwargs.setdefault("suggest_on_error", False)  # ours below: the same words on every version
        super().__init__(*args, parents=[*parents, GLOBAL_OPTIONS], **kwargs)
        self.set_defaults(command_prog=self.prog)  # the innermost command's wins: "agent-sleep episodes list"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)  # type: ignore[misc]
        except argparse.ArgumentError as exc:
            choices = action.choices or ()
            hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}{hint}") from None


def settings_from(args: argparse.Namespace) -> Settings:
    return get_settings(data_dir=getattr(args, "data_dir", None), database_url=getattr(args, "database_url", None))


def agent_hint(store: Any, agent: str | None) -> str:
    """``" (no agent named 'helpdsk'; did you mean 'helpdesk'?)"`` for an agent the store does not know, else ``""``."""
    if not agent:
        return ""
    known = store.agents()
    return "" if agent in known else f" (no agent named {agent!r}{did_you_mean(agent, known)})"


def add_json_flag(p: argparse.ArgumentParser, what: str = "print the result as one JSON object") -> None:
    p.add_argument("--json", action="store_true", help=what)


# ---------------------------------------------------------------- JSON and time


def iso_utc(value: datetime) -> str:
    """The one timestamp format of the CLI: ``2026-11-29T06:58:11+00:00`` (a naive time is taken as UTC)."""
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.isoformat(timespec="seconds")


def time_text(text: str | None) -> str | None:
    """A timestamp some library already rendered as text (``…Z``, microseconds, naive) in :func:`iso_utc` form."""
    if text is None:
        return None
    try:
        return iso_utc(datetime.fromisoformat(text))
    except ValueError:
        return text


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values, every datetime in :func:`iso_utc` (strings are left as they are)."""
    from pydantic import BaseModel

    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="python")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, datetime):
        return iso_utc(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    """One JSON value on one line of stdout (records, dataclasses and datetimes converted, see :func:`jsonable`)."""
    json.dump(jsonable(obj), sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- argparse type= validators


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, not {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def score(text: str) -> float:
    """A feedback score: a finite number in :data:`SCORE_RANGE` (0 bad ... 1 good)."""
    value = finite_float(text)
    low, high = SCORE_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between {low:g} (bad) and {high:g} (good), not {text}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


_WEIGHT = re.compile(r"[^=]+=.+")


def weight_pair(text: str) -> str:
    """``SKILL=W`` with a weight a stack may use (finite, 0 < |W| <= 4), returned unchanged (the handler splits it)."""
    from agent_sleep.adapters.stack import check_weight
    from agent_sleep.errors import InvalidInputError

    if not _WEIGHT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expects SKILL=NUMBER, got {text!r}")
    skill, _, value = text.partition("=")
    try:
        check_weight(value.strip(), skill)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ---------------------------------------------------------------- slow commands


@contextmanager
def status_line(label: str | None, stream: IO[str] | None = None, delay: float | None = None) -> Iterator[None]:
    """Say on stderr what a slow step is doing, then how long it took: ``label ...`` then ``... done in 2.3 s``.

    Nothing is written for a step that ends within ``delay`` seconds (default
    :data:`STATUS_DELAY_S`), so quick commands and fast failures stay quiet. Never
    stdout: ``--json`` output stays one clean JSON value.
    """
    if not label:
        yield
        return
    out = stream if stream is not None else sys.stderr
    wait = STATUS_DELAY_S if delay is None else delay
    started, lock, shown = time.perf_counter(), threading.Lock(), [False]

    def show() -> None:
        with lock:
            print(f"{label} ...", file=out, flush=True)
            shown[0] = True

    timer = threading.Timer(wait, show)
    timer.daemon = True
    if wait <= 0:
        show()
    else:
        timer.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        timer.cancel()
        with lock:
            if shown[0]:
                seconds = time.perf_counter() - started
                print(f"... {'done in' if ok else 'failed after'} {seconds:.1f} s", file=out, flush=True)


def slow_label(args: argparse.Namespace) -> str | None:
    """What a slow command does, as it registered with ``set_defaults(slow=...)`` (text, or a function of args)."""
    label: str | Callable[[argparse.Namespace], str | None] | None = getattr(args, "slow", None)
    return label(args) if callable(label) else label


# ---------------------------------------------------------------- files


def read_document_file(path: Path, settings: Settings) -> bytes:
    """The bytes of a document file a user named, without a leading UTF-8 byte-order mark.

    Only a regular file (or a symlink to one) up to ``settings.max_document_bytes``
    is read; anything else raises an InvalidInputError naming the path (see
    :func:`agent_sleep.fsutil.read_regular_file`). Decoding is left to the caller.
    """
    from agent_sleep.fsutil import read_regular_file

    try:
        raw = read_regular_file(path, settings.max_document_bytes, what="document")
    except PayloadTooLargeError as exc:
        raise PayloadTooLargeError(f"{exc} (AGENT_SLEEP_MAX_DOCUMENT_BYTES / Settings.max_document_bytes)") from None
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte-order mark is not part of the text


def print_adapter_next_steps(record: Any, rank: int, nbytes: int, agent: str | None, question: str) -> None:
    """The lines ``internalize`` and ``skill create`` print after registering an adapter: where it is, its size,
    and the commands that try and deploy it."""
    print(f"  path     {record.path}")
    print(f"  rank     {rank}   adapter {nbytes / 2**20:.2f} MB")
    hint = f"--agent {agent}" if agent else "--agent AGENT"
    print(f"  try it   agent-sleep ask --adapter {record.name} '{question}'")
    print(f"  deploy   agent-sleep deploy {record.name} {hint}")
