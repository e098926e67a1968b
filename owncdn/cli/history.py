"""
C{owncdn log} and C{owncdn rewind}: a storage database's changes, and
undoing those after a point.
"""

import argparse
from datetime import datetime, timezone
from pathlib import Path

from owncdn import config
from owncdn.cli.folder import CommandError, data_dir_of, print_table


def _database(args: argparse.Namespace) -> Path:
    """
    DB is a database file, or a service ID whose C{<sid>.db} is in the
    data folder.
    """
    path = Path(args.db)
    if path.is_file():
        return path
    in_data_dir = data_dir_of(args) / f"{args.db}.db"
    if config.ID_PATTERN.match(args.db) and in_data_dir.is_file():
        return in_data_dir
    raise CommandError(f"{args.db}: no such database file, nor {in_data_dir}")


def cmd_log(args: argparse.Namespace) -> None:
    # Imported here so that every other command works without the
    # storage stack.
    from owncdn.storage import restore

    try:
        changes = restore.read_log(
            _database(args), from_id=args.from_id, from_time=args.from_time,
            count=args.count, forward=args.forward,
        )
    except restore.RestoreError as e:
        raise CommandError(str(e)) from None
    if not changes:
        print("No changes.")
        return
    rows = [["ID", "TIME (UTC)", "OP", "VERSION", "SIZE", "PATH"]]
    rows += [[str(c.id),
              datetime.fromtimestamp(c.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
              c.op, c.version, str(c.size) if c.op == "put" else "", c.path]
             for c in changes]
    print_table(rows)


def cmd_rewind(args: argparse.Namespace) -> None:
    from owncdn.storage import restore

    database = _database(args)
    try:
        result = restore.rewind(database, to_id=args.to_id, to_time=args.to_time)
    except restore.RestoreError as e:
        raise CommandError(str(e)) from None
    print(f"Rewound {database}: {result}.")
