"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent_sleep.config import Settings, get_settings
from agent_sleep.errors import PayloadTooLargeError


def settings_from(args: argparse.Namespace) -> Settings:
    return get_settings(data_dir=getattr(args, "data_dir", None), database_url=getattr(args, "database_url", None))


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


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
