"""
The state of a replica as its poller records it, saved beside the
database for C{owncdn status}.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def status_path(data_dir: Path, sid: str) -> Path:
    return Path(data_dir) / f"{sid}.replica.json"


@dataclass
class ReplicaStatus:
    """
    What C{owncdn status} and C{servicelist} show of a replica.
    """

    source: str
    remote_sid: str
    state: str = "starting"  # syncing, ok, retrying, stopped
    last_attempt: float | None = None
    last_success: float | None = None
    last_result: str = ""
    last_applied: int = 0
    source_last: int | None = None
    failures: int = 0

    def as_json(self) -> dict:
        return asdict(self)


def write_status(path: Path, status: dict) -> None:
    """
    Replace the status file atomically (a reader never sees half).
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, indent=1))
    os.replace(tmp, path)


def read_status(path: Path) -> dict | None:
    """
    The last status a replica poller saved, or C{None}.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
