"""
The argument types of the C{owncdn} command line.  Each raises
C{ArgumentTypeError}, which argparse turns into a usage error (exit 2).
"""

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from owncdn import config


def setting(text: str) -> tuple[str, Any]:
    """
    C{name=value} of C{--set}: the value as JSON where it parses as JSON
    (numbers, true/false, objects), else as a string.
    """
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not name=value")
    if name in ("id", "type"):
        raise argparse.ArgumentTypeError("give the ID as SID and the type with --type")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def access(text: str) -> str | dict[str, str]:
    """
    C{read}, C{write}, or per-service levels as C{SID=LEVEL,...}.
    """
    if text in ("read", "write"):
        return text
    levels = {}
    for part in text.split(","):
        sid, sep, level = part.partition("=")
        if not sep or not sid or level not in config.ACCESS_LEVELS:
            raise argparse.ArgumentTypeError(
                f"{part!r}: give read, write or SID=LEVEL,... "
                "with LEVEL none, read or write"
            )
        levels[sid] = level
    return levels


def format_access(value: str | dict[str, str]) -> str:
    if isinstance(value, str):
        return value
    return ",".join(f"{sid}={level}" for sid, level in value.items()) or "no service"


def utc_time(text: str) -> datetime:
    """
    A UTC time written as C{YYYYMMDDHHMMSS}.
    """
    try:
        if len(text) != 14 or not text.isdigit():
            raise ValueError
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UTC time as YYYYMMDDHHMMSS"
        ) from None
