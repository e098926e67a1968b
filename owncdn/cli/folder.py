"""
What every C{owncdn} command shares: where the data folder is, reading
and saving its C{owncdn.json}, whether a daemon serves it, and printing
a table.
"""

import argparse
import json
import os
from pathlib import Path

from owncdn import config, lockfile
from owncdn.config import Config, ConfigError

DEFAULT_DATA_DIR = "./owncdn-data"
# The daemon holds this lock in the data folder while it runs, with a
# JSON note such as {"pid": 123, "listen": ["tcp:8080"]}.
LOCK_NAME = "owncdn.lock"


class CommandError(Exception):
    """
    A refusal, shown to the operator as one line on stderr (exit 1).
    """


def data_dir_of(args: argparse.Namespace) -> Path:
    """
    The data folder: C{--data-dir}, else C{OWNCDN_DATA_DIR}, else
    C{./owncdn-data}.
    """
    return Path(
        getattr(args, "data_dir", None)
        or os.environ.get("OWNCDN_DATA_DIR")
        or DEFAULT_DATA_DIR
    )


def current_config(data_dir: Path) -> Config:
    """
    The configuration as it is on disk now; its C{raw} is what an edit
    changes and saves.
    """
    if not (data_dir / config.CONFIG_NAME).exists():
        raise CommandError(
            f"{data_dir / config.CONFIG_NAME}: no configuration file "
            "(create one with `owncdn init`)"
        )
    return config.load(data_dir)


def save_config(data_dir: Path, raw: dict) -> None:
    try:
        config.save(data_dir, raw)
    except ConfigError as e:
        raise CommandError(f"nothing changed, the result would be invalid: {e}") from None


def running_daemon(data_dir: Path) -> dict | None:
    """
    The note of the daemon serving C{data_dir} (empty if it wrote none we
    can read), or C{None} when no daemon holds the folder.
    """
    lock = data_dir / LOCK_NAME
    if not lockfile.is_locked(lock):
        return None
    try:
        note = json.loads(lockfile.lock_note(lock))
    except ValueError:
        # The daemon writes its note just after taking the lock.
        return {}
    return note if isinstance(note, dict) else {}


def tell_daemon(data_dir: Path, reloads: bool) -> None:
    """
    Say how a running daemon takes up the change just saved: keys and
    replication sources on SIGHUP, services only after a restart.
    """
    daemon = running_daemon(data_dir)
    if daemon is None:
        return
    pid = daemon.get("pid")
    if not reloads:
        print("A daemon is running: restart it to apply this change.")
    else:
        signal = f"`kill -HUP {pid}`" if isinstance(pid, int) else "a SIGHUP"
        print(f"A daemon is running: {signal} makes it use this change.")


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
