"""
C{owncdn status}: the instance, whether a daemon serves its folder, and
a line of facts per service.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

from owncdn.cli.folder import current_config, data_dir_of, print_table, running_daemon
from owncdn.config import ServiceConfig
from owncdn.replication import admin


def human_size(size: int) -> str:
    """
    C{size} bytes in the units of C{owncdn.json} (powers of 1024).
    """
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            break
        size /= 1024
    return f"{size} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def _database_size(data_dir: Path, service: ServiceConfig) -> str | None:
    try:
        size = (data_dir / f"{service.id}.db").stat().st_size
    except FileNotFoundError:
        return None
    return f"database {human_size(size)}"


# The facts `owncdn status` adds after a service's ID, type and name:
# each returns one, or None when it has nothing to say about that
# service.  Other parts of OwnCDN (replication) append their own.
StatusDetail = Callable[[Path, ServiceConfig], str | None]
STATUS_DETAILS: list[StatusDetail] = [_database_size, admin.replica_status_detail]


def service_status(data_dir: Path, service: ServiceConfig) -> list[str]:
    """
    One row of the status table: ID, type, name and every detail.
    """
    details = [text for detail in STATUS_DETAILS if (text := detail(data_dir, service))]
    return [service.id, service.type, service.name, "; ".join(details)]


def _daemon_text(daemon: dict | None) -> str:
    if daemon is None:
        return "not running"
    facts = []
    if "pid" in daemon:
        facts.append(f"pid {daemon['pid']}")
    if daemon.get("listen"):
        facts.append("listening on " + ", ".join(map(str, daemon["listen"])))
    return ", ".join(["running"] + facts)


def cmd_status(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = current_config(data_dir)
    print_table([
        ["Instance:", current.instance_name],
        ["Data folder:", str(data_dir.resolve())],
        ["Daemon:", _daemon_text(running_daemon(data_dir))],
        ["API keys:", str(len(current.keys))],
        ["Replication sources:", str(len(current.sources))],
    ])
    print()
    print_table([["SERVICE", "TYPE", "NAME", "STATUS"]]
           + [service_status(data_dir, s) for s in current.services])
