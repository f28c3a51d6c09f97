"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent_sleep.config import Settings, get_settings


def settings_from(args: argparse.Namespace) -> Settings:
    return get_settings(data_dir=getattr(args, "data_dir", None), database_url=getattr(args, "database_url", None))


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
