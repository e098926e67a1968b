"""
The commands that edit C{owncdn.json}: C{init}, and adding, listing and
removing services, API keys and replication sources.

Every edit re-reads the current file, changes its decoded JSON and
writes it back through L{config.save}, which validates the whole file
and replaces it atomically with mode 0600.  A key's value is printed
once, when the key is created, and never again.
"""

import argparse
import json

from owncdn import config
from owncdn.cli.arguments import format_access
from owncdn.cli.folder import (
    CommandError,
    current_config,
    data_dir_of,
    print_table,
    save_config,
    tell_daemon,
)
from owncdn.config import Config, ServiceConfig


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
    rows += [[s.id, s.type, s.name, _replica_text(s)]
             for s in current_config(data_dir_of(args)).services]
    print_table(rows)


def cmd_service_show(args: argparse.Namespace) -> None:
    service = current_config(data_dir_of(args)).service(args.sid)
    if service is None:
        raise CommandError(f"no service has ID {args.sid!r}")
    print(json.dumps(service.raw, indent=2))


def cmd_service_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = current_config(data_dir)
    if current.service(args.sid) is not None:
        raise CommandError(f"a service with ID {args.sid!r} exists already")
    entry = {"id": args.sid, "type": args.type, **dict(args.settings)}
    current.raw["services"].append(entry)
    save_config(data_dir, current.raw)
    print(f"Added {args.type} service {args.sid}.")
    tell_daemon(data_dir, reloads=False)


def cmd_service_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = current_config(data_dir)
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
    save_config(data_dir, raw)
    print(f"Removed service {sid}.")
    if narrowed:
        print(f"Removed {sid} from the access of keys {', '.join(narrowed)}.")
    database = data_dir / f"{sid}.db"
    if database.exists():
        print(f"Its database {database} is kept: delete it when you no longer need the data.")
    tell_daemon(data_dir, reloads=False)


# key

def _key_entry(raw: dict, key_id: str) -> dict:
    for entry in raw.get("keys", []):
        if entry["id"] == key_id:
            return entry
    raise CommandError(f"no key has ID {key_id!r}")


def cmd_key_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = current_config(data_dir).raw
    key_id = args.id or config.new_key_id()
    if any(entry["id"] == key_id for entry in raw.get("keys", [])):
        raise CommandError(f"a key with ID {key_id!r} exists already")
    value = config.new_key_value()
    raw.setdefault("keys", []).append({"id": key_id, "value": value, "access": args.access})
    save_config(data_dir, raw)
    print(f"Added key {key_id} with access {format_access(args.access)}.")
    _print_new_key(key_id, value)
    tell_daemon(data_dir, reloads=True)


def cmd_key_list(args: argparse.Namespace) -> None:
    keys = current_config(data_dir_of(args)).keys
    if not keys:
        print("No API keys.")
        return
    print_table([["ID", "ACCESS"]] + [[k.id, format_access(k.access)] for k in keys])


def cmd_key_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = current_config(data_dir).raw
    raw["keys"].remove(_key_entry(raw, args.id))
    save_config(data_dir, raw)
    print(f"Removed key {args.id}.")
    tell_daemon(data_dir, reloads=True)


def cmd_key_access(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    raw = current_config(data_dir).raw
    _key_entry(raw, args.id)["access"] = args.access
    save_config(data_dir, raw)
    print(f"Key {args.id} now has access {format_access(args.access)}.")
    tell_daemon(data_dir, reloads=True)


# source

def _replicas_of(current: Config, source_id: str) -> list[str]:
    return [s.id for s in current.services
            if (s.options.get("replica") or {}).get("source") == source_id]


def cmd_source_add(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = current_config(data_dir)
    if current.source(args.id) is not None:
        raise CommandError(f"a replication source with ID {args.id!r} exists already")
    entry = {"id": args.id, "url": args.url, "key": args.key}
    if args.name is not None:
        entry["name"] = args.name
    current.raw.setdefault("replicationSources", []).append(entry)
    save_config(data_dir, current.raw)
    print(f"Added replication source {args.id}.")
    tell_daemon(data_dir, reloads=True)


def cmd_source_list(args: argparse.Namespace) -> None:
    current = current_config(data_dir_of(args))
    if not current.sources:
        print("No replication sources.")
        return
    rows = [["ID", "NAME", "URL", "REPLICAS"]]
    rows += [[s.id, s.name, s.url, ", ".join(_replicas_of(current, s.id))]
             for s in current.sources]
    print_table(rows)


def cmd_source_remove(args: argparse.Namespace) -> None:
    data_dir = data_dir_of(args)
    current = current_config(data_dir)
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
    save_config(data_dir, raw)
    print(f"Removed replication source {args.id}.")
    tell_daemon(data_dir, reloads=True)
