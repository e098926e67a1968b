"""
The C{owncdn} command line: every command, its arguments and its
handler.
"""

import argparse

from owncdn import config
from owncdn.cli import configure, history, replica, status
from owncdn.cli.arguments import access, setting, utc_time


def build_parser() -> argparse.ArgumentParser:
    # Every parser knows --data-dir so it works before and after the
    # subcommand; SUPPRESS keeps a subcommand's parser from overwriting
    # a value given earlier with its own default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=argparse.SUPPRESS, metavar="DIR",
        help="the data folder (default: $OWNCDN_DATA_DIR, else ./owncdn-data)",
    )
    parser = argparse.ArgumentParser(
        prog="owncdn", parents=[common],
        description="Manage the configuration of an OwnCDN data folder.",
    )

    def group(parent, name: str, summary: str):
        sub = parent.add_parser(name, parents=[common], help=summary, description=summary)
        return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def command(parent, name: str, handler, summary: str) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(commands, "init", configure.cmd_init,
            "create the default configuration and print its key once")
    command(commands, "status", status.cmd_status,
            "show the instance, its services and whether a daemon serves the folder")

    services = group(commands, "service", "list, show, add and remove services")
    command(services, "list", configure.cmd_service_list, "list the services")
    command(services, "show", configure.cmd_service_show,
            "print a service's settings as JSON").add_argument("sid", metavar="SID")
    add = command(services, "add", configure.cmd_service_add, "add a service")
    add.add_argument("sid", metavar="SID")
    add.add_argument("--type", required=True, choices=sorted(config.SERVICE_FIELDS))
    add.add_argument(
        "--set", dest="settings", type=setting, action="append", default=[],
        metavar="NAME=VALUE", help="a setting; VALUE is read as JSON where it parses as JSON",
    )
    command(services, "remove", configure.cmd_service_remove,
            "remove a service").add_argument("sid", metavar="SID")

    keys = group(commands, "key", "manage API keys")
    add = command(keys, "add", configure.cmd_key_add, "create a key and print its value once")
    add.add_argument("--id", help="the key ID (default: a new random one)")
    add.add_argument("--access", type=access, default="read",
                     help="read, write or SID=LEVEL,... (default: read)")
    command(keys, "list", configure.cmd_key_list, "list key IDs and their access")
    command(keys, "remove", configure.cmd_key_remove,
            "remove a key").add_argument("id", metavar="ID")
    change = command(keys, "access", configure.cmd_key_access, "set a key's access")
    change.add_argument("id", metavar="ID")
    change.add_argument("access", type=access, metavar="ACCESS",
                        help="read, write or SID=LEVEL,...")

    sources = group(commands, "source", "manage replication sources")
    add = command(sources, "add", configure.cmd_source_add, "add a replication source")
    add.add_argument("id", metavar="ID")
    add.add_argument("--url", required=True, help="the API URL of the primary instance")
    add.add_argument("--key", required=True, help="a key value valid on the primary")
    add.add_argument("--name")
    command(sources, "list", configure.cmd_source_list,
            "list replication sources (never their keys)")
    command(sources, "remove", configure.cmd_source_remove,
            "remove a replication source").add_argument("id", metavar="ID")

    replicas = group(commands, "replica", "manage replica storage services")
    command(replicas, "resync", replica.cmd_replica_resync,
            "drop a replica's copy so that it is rebuilt from its source"
            ).add_argument("sid", metavar="SID")

    log = command(commands, "log", history.cmd_log, "list the changes of a storage database")
    log.add_argument("db", metavar="DB", help="a .db file, or a storage service ID")
    log.add_argument("--from-id", type=int, metavar="N")
    log.add_argument("--from-time", type=utc_time, metavar="YYYYMMDDHHMMSS")
    log.add_argument("--count", type=int, metavar="N")
    log.add_argument("--forward", action="store_true", help="oldest first")

    rewind = command(commands, "rewind", history.cmd_rewind,
                     "undo the changes of a storage database after a point")
    rewind.add_argument("db", metavar="DB", help="a .db file, or a storage service ID")
    point = rewind.add_mutually_exclusive_group(required=True)
    point.add_argument("--to-id", type=int, metavar="N")
    point.add_argument("--to-time", type=utc_time, metavar="YYYYMMDDHHMMSS")
    return parser
