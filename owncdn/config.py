"""
Load, validate and save C{owncdn.json}, the configuration in the data
folder (SPEC section 3).

The file is the contract: L{load} refuses anything it does not
understand with a L{ConfigError} naming the field, and L{save} writes it
atomically with mode 0600 because it holds key values.
"""

import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from owncdn.durable import sync_folder
from owncdn.configschema import (  # noqa: F401 (ConfigError and the parsers are this module's API too)
    FILE_SERVICE_TYPES,
    ID_PATTERN,
    REQUIRED,
    SERVICE_FIELDS,
    ConfigError,
    no_unknown_fields,
    string_value,
    url_value,
    parse_duration,
    parse_size,
)

CONFIG_NAME = "owncdn.json"
ACCESS_LEVELS = ("none", "read", "write")
DEFAULT_MAX_UPLOAD = 5 * 1024**3
DEFAULT_HEADER_TIMEOUT = 30.0
# As nginx's client_body_timeout: the longest a request body may pause.
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_S3_UPLOAD_EXPIRY = 7 * 86400.0
# The region S3 requests must be signed for: the one clients assume when
# given none (and that GetBucketLocation reports as an empty constraint).
DEFAULT_S3_REGION = "us-east-1"
# Lower-case letters, digits and dashes, as AWS region names are; the
# name goes into headers and XML as it is.
_REGION = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")

_KEY_VALUE = re.compile(r"[\x21-\x7e]+")


@dataclass
class ServiceConfig:
    """
    One entry of C{services}: C{raw} is the JSON object as written,
    C{options} the parsed values with defaults filled in.
    """

    id: str
    type: str
    name: str
    raw: dict
    options: dict


@dataclass
class KeyConfig:
    """
    One API key.  C{access} is C{"read"}, C{"write"} or a mapping of
    service ID to C{"none"} / C{"read"} / C{"write"}.
    """

    id: str
    value: str = field(repr=False)
    access: str | dict


@dataclass
class ReplicationSource:
    id: str
    name: str
    url: str
    key: str = field(repr=False)


@dataclass
class Config:
    instance_name: str
    services: list[ServiceConfig]
    keys: list[KeyConfig]
    sources: list[ReplicationSource]
    max_upload_size: int = DEFAULT_MAX_UPLOAD
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    s3_upload_expiry: float = DEFAULT_S3_UPLOAD_EXPIRY
    s3_region: str = DEFAULT_S3_REGION
    raw: dict = field(default_factory=dict, repr=False)

    def service(self, sid: str) -> ServiceConfig | None:
        # A plain loop: every S3 request asks, and a generator costs more.
        for service in self.services:
            if service.id == sid:
                return service
        return None

    def source(self, source_id: str) -> ReplicationSource | None:
        return next((s for s in self.sources if s.id == source_id), None)


def _object_list(raw, name):
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"{name}[{index}]: must be an object")
    return value


def _check_id(value, where, seen):
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid ID "
            "(1-63 letters, digits, '-', '_' or '.')"
        )
    if value in seen:
        raise ConfigError(f"{where}: duplicate ID {value!r}")
    seen.add(value)
    return value


def _parse_service(index: int, raw: dict, seen: set) -> ServiceConfig:
    where = f"services[{index}]"
    sid = _check_id(raw.get("id"), f"{where}.id", seen)
    where = f"services[{index}] ({sid})"
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in SERVICE_FIELDS:
        raise ConfigError(
            f"{where}.type: {kind!r} is not a service type "
            f"(one of {', '.join(sorted(SERVICE_FIELDS))})"
        )
    if (kind == "api") != (sid == "api"):
        raise ConfigError(f"{where}.type: the api service, and only it, has ID 'api'")
    fields = SERVICE_FIELDS[kind]
    options = {}
    for name, value in raw.items():
        if name in ("id", "type"):
            continue
        if name == "name":
            string_value(value, f"{where}.name")
            continue
        if name not in fields:
            raise ConfigError(f"{where}.{name}: unknown field for type {kind}")
        options[name] = fields[name][0](value, f"{where}.{name}")
    for name, (_, default) in fields.items():
        if name not in options:
            if default is REQUIRED:
                raise ConfigError(f"{where}.{name}: missing (required for type {kind})")
            options[name] = default
    return ServiceConfig(sid, kind, raw.get("name", sid), raw, options)


def _parse_access(value, where, service_ids):
    if value in ("read", "write"):
        return value
    if isinstance(value, dict):
        for sid, level in value.items():
            if sid not in service_ids:
                raise ConfigError(f"{where}.{sid}: no service has this ID")
            if level not in ACCESS_LEVELS:
                raise ConfigError(
                    f"{where}.{sid}: {level!r} is not an access level "
                    "(none, read or write)"
                )
        return dict(value)
    raise ConfigError(
        f"{where}: {value!r} is not an access level "
        "(\"read\", \"write\" or an object of per-service levels)"
    )


def _check_sources(services: list[ServiceConfig]) -> None:
    by_id = {s.id: s for s in services}
    for service in services:
        source = service.options.get("source")
        if source is None:
            continue
        where = f"services ({service.id}).source"
        if source not in by_id:
            raise ConfigError(f"{where}: no service has ID {source!r}")
        if by_id[source].type not in FILE_SERVICE_TYPES:
            raise ConfigError(
                f"{where}: {source!r} is a {by_id[source].type} service, "
                "which serves no files"
            )
    for service in services:
        chain, current = [service.id], service
        while (source := current.options.get("source")) is not None:
            if source in chain:
                raise ConfigError(
                    f"services ({service.id}).source: the chain "
                    f"{' -> '.join(chain + [source])} is a cycle"
                )
            chain.append(source)
            current = by_id[source]


def _region(value, where: str) -> str:
    region = string_value(value, where)
    if not _REGION.fullmatch(region):
        raise ConfigError(f"{where}: {region!r} is not a region name (such as \"eu-west-1\")")
    return region


def parse(raw) -> Config:
    """
    Validate a decoded C{owncdn.json}.

    @raise ConfigError: naming the first invalid field.
    """
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    known = {"instanceName", "services", "keys", "replicationSources",
             "maxUploadSize", "headerTimeout", "bodyTimeout", "s3UploadExpiry", "s3Region"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level field")
    instance = string_value(raw.get("instanceName", "owncdn"), "instanceName")

    seen: set = set()
    services = [_parse_service(i, s, seen) for i, s in
                enumerate(_object_list(raw, "services"))]
    if not any(s.type == "api" for s in services):
        raise ConfigError("services: there is no api service (type api, ID api)")
    _check_sources(services)
    service_ids = {s.id for s in services}

    seen_sources: set = set()
    sources = []
    for index, item in enumerate(_object_list(raw, "replicationSources")):
        where = f"replicationSources[{index}]"
        no_unknown_fields(item, {"id", "name", "url", "key"}, where)
        sid = _check_id(item.get("id"), f"{where}.id", seen_sources)
        if "key" not in item:
            raise ConfigError(f"{where}.key: missing")
        if "url" not in item:
            raise ConfigError(f"{where}.url: missing")
        sources.append(ReplicationSource(
            sid,
            string_value(item.get("name", sid), f"{where}.name"),
            url_value(item["url"], f"{where}.url"),
            string_value(item["key"], f"{where}.key"),
        ))
    for service in services:
        replica = service.options.get("replica")
        if replica and replica["source"] not in seen_sources:
            raise ConfigError(
                f"services ({service.id}).replica.source: no replication "
                f"source has ID {replica['source']!r}"
            )

    seen_keys: set = set()
    values: set = set()
    keys = []
    for index, item in enumerate(_object_list(raw, "keys")):
        where = f"keys[{index}]"
        no_unknown_fields(item, {"id", "value", "access", "name"}, where)
        kid = _check_id(item.get("id"), f"{where}.id", seen_keys)
        if "name" in item:
            string_value(item["name"], f"{where} ({kid}).name")
        value = item.get("value")
        # The value travels in an HTTP header and is the S3 signing
        # secret: anything but visible ASCII could never be sent intact.
        if not isinstance(value, str) or len(value) < 16 or not _KEY_VALUE.fullmatch(value):
            raise ConfigError(
                f"{where} ({kid}).value: must be at least 16 visible ASCII "
                "characters (no spaces)"
            )
        if value in values:
            raise ConfigError(f"{where} ({kid}).value: the same value as another key")
        values.add(value)
        if "access" not in item:
            raise ConfigError(f"{where} ({kid}).access: missing")
        access = _parse_access(item["access"], f"{where} ({kid}).access", service_ids)
        keys.append(KeyConfig(kid, value, access))

    return Config(
        instance_name=instance,
        services=services,
        keys=keys,
        sources=sources,
        max_upload_size=parse_size(raw.get("maxUploadSize", DEFAULT_MAX_UPLOAD), "maxUploadSize"),
        header_timeout=parse_duration(raw.get("headerTimeout", DEFAULT_HEADER_TIMEOUT), "headerTimeout"),
        body_timeout=parse_duration(raw.get("bodyTimeout", DEFAULT_BODY_TIMEOUT), "bodyTimeout"),
        s3_upload_expiry=parse_duration(raw.get("s3UploadExpiry", DEFAULT_S3_UPLOAD_EXPIRY),
                                        "s3UploadExpiry"),
        s3_region=_region(raw.get("s3Region", DEFAULT_S3_REGION), "s3Region"),
        raw=raw,
    )


def load(data_dir: Path) -> Config:
    """
    Read and validate C{owncdn.json} in C{data_dir}.

    @raise ConfigError: the file is missing, not JSON, or invalid.
    """
    path = Path(data_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no configuration file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse(raw)


def save(data_dir: Path, raw: dict) -> None:
    """
    Validate C{raw} and write it as C{owncdn.json}: to a temporary file
    in the same folder, fsync, then rename, so a reader (or a crash)
    only ever sees the old or the new file; mode 0600 throughout.
    """
    parse(raw)
    data_dir = Path(data_dir)
    text = json.dumps(raw, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".owncdn.json.", dir=data_dir)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / CONFIG_NAME)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    sync_folder(data_dir)


def new_key_value() -> str:
    """
    A fresh secret key value (256 bits, URL-safe).
    """
    return secrets.token_urlsafe(32)


def new_key_id() -> str:
    """
    A fresh key ID in the style of an S3 access key ID.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "OC" + "".join(secrets.choice(alphabet) for _ in range(18))


def default_config() -> tuple[dict, str]:
    """
    The working default for a fresh data folder: the api service, one
    storage service and one read/write key.

    @return: the raw configuration and the new key's value.
    """
    value = new_key_value()
    raw = {
        "instanceName": "owncdn",
        "services": [
            {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
            {"id": "files", "type": "storage", "name": "Files",
             "caseSensitive": True, "keepVersions": True},
        ],
        "keys": [{"id": new_key_id(), "value": value, "access": "write"}],
        "replicationSources": [],
    }
    return raw, value


def init_data_dir(data_dir: Path) -> tuple[Config, str | None]:
    """
    Make sure C{data_dir} holds a configuration, writing the default on
    first use.

    @return: the loaded configuration and, when it was just created, the
        new key's value (to be shown once); else C{None}.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (data_dir / CONFIG_NAME).exists():
        return load(data_dir), None
    raw, value = default_config()
    save(data_dir, raw)
    return load(data_dir), value
