"""
The C{owncdn} admin command (SPEC sections 3 and 7): manage
C{owncdn.json} (services, API keys, replication sources) without editing
JSON by hand, show status, and list or rewind a storage database's
changes.

L{main} is the console script.  The commands live in modules named for
what they do: L{configure} (init, service, key, source), L{status},
L{history} (log, rewind) and L{replica}; L{folder} holds what they
share, L{arguments} the argument types and L{parser} the command line.
"""

import sys

from owncdn.cli.folder import LOCK_NAME, CommandError, data_dir_of
from owncdn.cli.parser import build_parser
from owncdn.cli.status import STATUS_DETAILS
from owncdn.config import ConfigError

__all__ = ["LOCK_NAME", "STATUS_DETAILS", "build_parser", "data_dir_of", "main"]


def main(argv: list[str] | None = None) -> int:
    """
    Run the C{owncdn} command.

    @return: the exit status: 0, 1 for a refusal or failure, 2 for a
        usage error.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        # argparse exits 2 after a usage error and 0 after --help.
        return int(e.code or 0)
    try:
        args.handler(args)
    except (CommandError, ConfigError) as e:
        print(f"owncdn: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"owncdn: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return 0
