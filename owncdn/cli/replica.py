"""
C{owncdn replica}: managing replica storage services.
"""

import argparse

from owncdn.cli.folder import LOCK_NAME, CommandError, current_config, data_dir_of
from owncdn.replication import admin


def cmd_replica_resync(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    service = current_config(data_dir).service(args.sid)
    if service is None:
        raise CommandError(f"there is no service {args.sid!r}")
    try:
        removed = admin.resync(data_dir, service, data_dir / LOCK_NAME)
    except admin.ResyncRefused as e:
        raise CommandError(str(e)) from None
    print(f"Removed {len(removed)} files of replica {args.sid}; "
          "the next start copies its source again from the first change.")
