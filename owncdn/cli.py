"""
The C{owncdn} admin command (SPEC sections 3 and 7): manage
C{owncdn.json} (services, API keys, replication sources) without editing
JSON by hand, show status, and list or rewind a storage database's
changes.

Every edit re-reads the current file, changes its decoded JSON and
writes it back through L{config.save}, which validates the whole file
and replaces it atomically with mode 0600.  A key's value is printed
once, when the key is created, and never again.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from owncdn import config, lockfile
from owncdn.config import Config, ConfigError, ServiceConfig
from owncdn.replication import admin

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


def _current(data_dir: Path) -> Config:
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


def _save(data_dir: Path, raw: dict) -> None:
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


def _tell_daemon(data_dir: Path, reloads: bool) -> None:
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


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# Argument types.  Each raises ArgumentTypeError, which argparse turns
# into a usage error (exit 2).

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


# init

def _print_new_key(key_id: str, value: str) -> None:
    print(f"Key ID:    {key_id}")
    print(f"Key value: {value}")
    print("The value is shown only this once: store it now.")


def cmd_init(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    path = data_dir / config.CONFIG_NAME
    if path.exists():
        raise CommandError(f"{path} already exists; nothing changed")
    loaded, value = config.init_data_dir(data_dir)
    if value is None:
        raise CommandError(f"{path} was created by another process meanwhile; nothing changed")
    services = ", ".join(f"{s.id} ({s.type})" for s in loaded.services)
    print(f"Created {path} with the services {services} and one API key.")
    _print_new_key(loaded.keys[0].id, value)


# service

def _replica_text(service: ServiceConfig) -> str:
    replica = service.options.get("replica")
    if replica:
        return f"replica of {replica['sid']} at {replica['source']}"
    source = service.options.get("source")
    return f"from {source}" if source else ""


def cmd_service_list(args: argparse.Namespace) -> None:
    rows = [["ID", "TYPE", "NAME", "SOURCE"]]
    rows += [[s.id, s.type, s.name, _replica_text(s)] for s in _current(data_dir_of(args)).services]
    _table(rows)


def cmd_service_show(args: argparse.Namespace) -> None:
    service = _current(data_dir_of(args)).service(args.sid)
    if service is None:
        raise CommandError(f"no service has ID {args.sid!r}")
    print(json.dumps(service.raw, indent=2))


def cmd_service_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = _current(data_dir)
    if current.service(args.sid) is not None:
        raise CommandError(f"a service with ID {args.sid!r} exists already")
    entry = {"id": args.sid, "type": args.type, **dict(args.settings)}
    current.raw["services"].append(entry)
    _save(data_dir, current.raw)
    print(f"Added {args.type} service {args.sid}.")
    _tell_daemon(data_dir, reloads=False)


def cmd_service_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = _current(data_dir)
    sid = args.sid
    if sid == "api":
        raise CommandError("the api service cannot be removed: every instance has one")
    if current.service(sid) is None:
        raise CommandError(f"no service has ID {sid!r}")
    users = [s.id for s in current.services if s.options.get("source") == sid]
    if users:
        raise CommandError(
            f"service {sid!r} is the source of {', '.join(users)}: "
            "remove those first or give them another source"
        )
    raw = current.raw
    raw["services"] = [s for s in raw["services"] if s["id"] != sid]
    # Per-service access naming a removed service would make the file
    # invalid, so the entry goes with the service.
    narrowed = []
    for key in raw.get("keys", []):
        if isinstance(key["access"], dict) and sid in key["access"]:
            del key["access"][sid]
            narrowed.append(key["id"])
    _save(data_dir, raw)
    print(f"Removed service {sid}.")
    if narrowed:
        print(f"Removed {sid} from the access of keys {', '.join(narrowed)}.")
    database = data_dir / f"{sid}.db"
    if database.exists():
        print(f"Its database {database} is kept: delete it when you no longer need the data.")
    _tell_daemon(data_dir, reloads=False)


# key

def _key_entry(raw: dict, key_id: str) -> dict:
    for entry in raw.get("keys", []):
        if entry["id"] == key_id:
            return entry
    raise CommandError(f"no key has ID {key_id!r}")


def cmd_key_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = _current(data_dir).raw
    key_id = args.id or config.new_key_id()
    if any(entry["id"] == key_id for entry in raw.get("keys", [])):
        raise CommandError(f"a key with ID {key_id!r} exists already")
    value = config.new_key_value()
    raw.setdefault("keys", []).append({"id": key_id, "value": value, "access": args.access})
    _save(data_dir, raw)
    print(f"Added key {key_id} with access {format_access(args.access)}.")
    _print_new_key(key_id, value)
    _tell_daemon(data_dir, reloads=True)


def cmd_key_list(args: argparse.Namespace) -> None:
    keys = _current(data_dir_of(args)).keys
    if not keys:
        print("No API keys.")
        return
    _table([["ID", "ACCESS"]] + [[k.id, format_access(k.access)] for k in keys])


def cmd_key_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = _current(data_dir).raw
    raw["keys"].remove(_key_entry(raw, args.id))
    _save(data_dir, raw)
    print(f"Removed key {args.id}.")
    _tell_daemon(data_dir, reloads=True)


def cmd_key_access(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = _current(data_dir).raw
    _key_entry(raw, args.id)["access"] = args.access
    _save(data_dir, raw)
    print(f"Key {args.id} now has access {format_access(args.access)}.")
    _tell_daemon(data_dir, reloads=True)


# source

def _replicas_of(current: Config, source_id: str) -> list[str]:
    return [s.id for s in current.services
            if (s.options.get("replica") or {}).get("source") == source_id]


def cmd_source_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = _current(data_dir)
    if current.source(args.id) is not None:
        raise CommandError(f"a replication source with ID {args.id!r} exists already")
    entry = {"id": args.id, "url": args.url, "key": args.key}
    if args.name is not None:
        entry["name"] = args.name
    current.raw.setdefault("replicationSources", []).append(entry)
    _save(data_dir, current.raw)
    print(f"Added replication source {args.id}.")
    _tell_daemon(data_dir, reloads=True)


def cmd_source_list(args: argparse.Namespace) -> None:
    current = _current(data_dir_of(args))
    if not current.sources:
        print("No replication sources.")
        return
    rows = [["ID", "NAME", "URL", "REPLICAS"]]
    rows += [[s.id, s.name, s.url, ", ".join(_replicas_of(current, s.id))]
             for s in current.sources]
    _table(rows)


def cmd_source_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = _current(data_dir)
    if current.source(args.id) is None:
        raise CommandError(f"no replication source has ID {args.id!r}")
    replicas = _replicas_of(current, args.id)
    if replicas:
        raise CommandError(
            f"replication source {args.id!r} is used by {', '.join(replicas)}: "
            "remove those services first"
        )
    raw = current.raw
    raw["replicationSources"] = [s for s in raw["replicationSources"] if s["id"] != args.id]
    _save(data_dir, raw)
    print(f"Removed replication source {args.id}.")
    _tell_daemon(data_dir, reloads=True)


# status

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
    current = _current(data_dir)
    _table([
        ["Instance:", current.instance_name],
        ["Data folder:", str(data_dir.resolve())],
        ["Daemon:", _daemon_text(running_daemon(data_dir))],
        ["API keys:", str(len(current.keys))],
        ["Replication sources:", str(len(current.sources))],
    ])
    print()
    _table([["SERVICE", "TYPE", "NAME", "STATUS"]]
           + [service_status(data_dir, s) for s in current.services])


# log and rewind

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
    _table(rows)


def cmd_rewind(args: argparse.Namespace) -> None:
    from owncdn.storage import restore

    database = _database(args)
    try:
        result = restore.rewind(database, to_id=args.to_id, to_time=args.to_time)
    except restore.RestoreError as e:
        raise CommandError(str(e)) from None
    print(f"Rewound {database}: {result}.")


def cmd_replica_resync(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    service = _current(data_dir).service(args.sid)
    if service is None:
        raise CommandError(f"there is no service {args.sid!r}")
    try:
        removed = admin.resync(data_dir, service, data_dir / LOCK_NAME)
    except admin.ResyncRefused as e:
        raise CommandError(str(e)) from None
    print(f"Removed {len(removed)} files of replica {args.sid}; "
          "the next start copies its source again from the first change.")


# the command line

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
    command(commands, "init", cmd_init,
            "create the default configuration and print its key once")
    command(commands, "status", cmd_status,
            "show the instance, its services and whether a daemon serves the folder")

    services = group(commands, "service", "list, show, add and remove services")
    command(services, "list", cmd_service_list, "list the services")
    command(services, "show", cmd_service_show,
            "print a service's settings as JSON").add_argument("sid", metavar="SID")
    add = command(services, "add", cmd_service_add, "add a service")
    add.add_argument("sid", metavar="SID")
    add.add_argument("--type", required=True, choices=sorted(config.SERVICE_FIELDS))
    add.add_argument(
        "--set", dest="settings", type=setting, action="append", default=[],
        metavar="NAME=VALUE", help="a setting; VALUE is read as JSON where it parses as JSON",
    )
    command(services, "remove", cmd_service_remove,
            "remove a service").add_argument("sid", metavar="SID")

    keys = group(commands, "key", "manage API keys")
    add = command(keys, "add", cmd_key_add, "create a key and print its value once")
    add.add_argument("--id", help="the key ID (default: a new random one)")
    add.add_argument("--access", type=access, default="read",
                     help="read, write or SID=LEVEL,... (default: read)")
    command(keys, "list", cmd_key_list, "list key IDs and their access")
    command(keys, "remove", cmd_key_remove, "remove a key").add_argument("id", metavar="ID")
    change = command(keys, "access", cmd_key_access, "set a key's access")
    change.add_argument("id", metavar="ID")
    change.add_argument("access", type=access, metavar="ACCESS",
                        help="read, write or SID=LEVEL,...")

    sources = group(commands, "source", "manage replication sources")
    add = command(sources, "add", cmd_source_add, "add a replication source")
    add.add_argument("id", metavar="ID")
    add.add_argument("--url", required=True, help="the API URL of the primary instance")
    add.add_argument("--key", required=True, help="a key value valid on the primary")
    add.add_argument("--name")
    command(sources, "list", cmd_source_list, "list replication sources (never their keys)")
    command(sources, "remove", cmd_source_remove,
            "remove a replication source").add_argument("id", metavar="ID")

    replicas = group(commands, "replica", "manage replica storage services")
    command(replicas, "resync", cmd_replica_resync,
            "drop a replica's copy so that it is rebuilt from its source"
            ).add_argument("sid", metavar="SID")

    log = command(commands, "log", cmd_log, "list the changes of a storage database")
    log.add_argument("db", metavar="DB", help="a .db file, or a storage service ID")
    log.add_argument("--from-id", type=int, metavar="N")
    log.add_argument("--from-time", type=utc_time, metavar="YYYYMMDDHHMMSS")
    log.add_argument("--count", type=int, metavar="N")
    log.add_argument("--forward", action="store_true", help="oldest first")

    rewind = command(commands, "rewind", cmd_rewind,
                     "undo the changes of a storage database after a point")
    rewind.add_argument("db", metavar="DB", help="a .db file, or a storage service ID")
    point = rewind.add_mutually_exclusive_group(required=True)
    point.add_argument("--to-id", type=int, metavar="N")
    point.add_argument("--to-time", type=utc_time, metavar="YYYYMMDDHHMMSS")
    return parser


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
