"""
What the C{owncdn} command shows and does for replicas: the status line
and C{owncdn replica resync}.
"""

import time
from pathlib import Path

from owncdn.config import ServiceConfig
from owncdn.lockfile import is_locked
from owncdn.replication.status import read_status, status_path

DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{max(0, int(time.time() - seconds))}s ago"


def replica_status_detail(data_dir: Path, service: ServiceConfig) -> str | None:
    """
    The replication facts of a replica service for C{owncdn status}.
    """
    replica = service.options.get("replica")
    if not replica:
        return None
    where = f"replica of {replica['source']}/{replica['sid']}"
    status = read_status(status_path(data_dir, service.id))
    if status is None:
        return f"{where}: not synced yet"
    return (f"{where}: {status.get('state')}, last applied change "
            f"{status.get('last_applied')} (source at {status.get('source_last')}), "
            f"last attempt {_ago(status.get('last_attempt'))}, "
            f"last success {_ago(status.get('last_success'))}: {status.get('last_result')}")


class ResyncRefused(Exception):
    pass


def resync(data_dir: Path, service: ServiceConfig, daemon_lock: Path) -> list[Path]:
    """
    Remove a replica's database so the next start copies the source
    again from change 0.  Refused while a daemon holds the folder or
    the database.

    @return: the files removed.
    """
    if not service.options.get("replica"):
        raise ResyncRefused(f"{service.id} is not a replica")
    db = Path(data_dir) / f"{service.id}.db"
    if is_locked(daemon_lock) or is_locked(Path(f"{db}.lock")):
        raise ResyncRefused("a daemon is serving this folder: stop it first, resync, start it")
    removed = []
    for path in [Path(f"{db}{suffix}") for suffix in DATABASE_SUFFIXES] + [
            status_path(data_dir, service.id)]:
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
