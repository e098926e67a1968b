"""
Load, validate and save C{owncdn.json}, the configuration in the data
folder (SPEC section 3).

The file is the contract: L{load} refuses anything it does not
understand with a L{ConfigError} naming the field, and L{save} writes it
atomically with mode 0600 because it holds key values.
"""

import json
import math
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CONFIG_NAME = "owncdn.json"
# \Z, not $: $ also matches before a trailing newline.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,63}\Z")
ACCESS_LEVELS = ("none", "read", "write")
DEFAULT_MAX_UPLOAD = 5 * 1024**3
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_S3_UPLOAD_EXPIRY = 7 * 86400.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_KEY_VALUE = re.compile(r"[\x21-\x7e]+")


class ConfigError(ValueError):
    """
    The configuration is invalid; the message names the field.
    """


def parse_duration(value, where: str) -> float:
    """
    Seconds from a number or a string such as C{"30s"}, C{"5m"}, C{"1h"},
    C{"7d"}.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a duration")
    # json.loads accepts Infinity and NaN; neither is a duration.
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ConfigError(
        f"{where}: {value!r} is not a duration "
        "(use whole seconds or a number with s, m, h or d, such as \"5m\")"
    )


def parse_size(value, where: str) -> int:
    """
    Bytes from a number or a string such as C{"10MB"} (powers of 1024).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a size")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "").upper()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ConfigError(
        f"{where}: {value!r} is not a size "
        "(use bytes or a number with KB, MB, GB or TB, such as \"10MB\")"
    )


def _bool(value, where):
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not true or false")
    return value


def _string(value, where):
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value


def _port(value, where):
    if value == "*":
        return None
    # isdigit() alone lets through digits int() cannot read, such as "²".
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise ConfigError(f"{where}: {value!r} is not a port number or \"*\"")


def _host(value, where):
    value = _string(value, where)
    return None if value in ("*", "") else value.lower()


def _source_path(value, where):
    value = _string(value, where).strip("/")
    if any(seg in ("", ".", "..") for seg in value.split("/")) and value:
        raise ConfigError(f"{where}: {value!r} must be whole path segments")
    return value


def _path_prefix(value, where):
    value = _string(value, where)
    if not value.startswith("/"):
        raise ConfigError(f"{where}: {value!r} must start with /")
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ConfigError(f"{where}: {value!r} must not contain . or .. segments")
    return value


def _keep_versions(value, where):
    if isinstance(value, bool):
        return value
    return parse_duration(value, where)


def _url(value, where):
    value = _string(value, where)
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a port out of range
    except ValueError as e:
        raise ConfigError(f"{where}: {value!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {value!r} is not an http:// or https:// URL")
    return value


def _quality(value, where):
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100:
        return value
    raise ConfigError(f"{where}: {value!r} is not a quality from 1 to 100")


def _positive_int(value, where):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ConfigError(f"{where}: {value!r} is not a positive whole number")


def _seconds(value, where):
    return int(parse_duration(value, where))


def _replica(value, where):
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be an object with source and sid")
    unknown = set(value) - {"source", "sid"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field")
    for name in ("source", "sid"):
        if name not in value:
            raise ConfigError(f"{where}.{name}: missing")
        if not ID_PATTERN.match(str(_string(value[name], f"{where}.{name}"))):
            raise ConfigError(f"{where}.{name}: {value[name]!r} is not a valid ID")
    return dict(value)


# For each service type: field -> (parser, default).  A default of
# REQUIRED makes the field mandatory.
REQUIRED = object()
_CACHE_COMMON = {
    "source": (_string, REQUIRED),
    "sourcePath": (_source_path, ""),
    "caseSensitive": (_bool, True),
    "refresh": (parse_duration, 0.0),
    "expireUnused": (parse_duration, 0.0),
    "expireNotFound": (parse_duration, 0.0),
    "expireErrors": (parse_duration, 0.0),
}
SERVICE_FIELDS = {
    "api": {"host": (_host, None), "port": (_port, None), "cors": (_bool, False)},
    "storage": {
        "caseSensitive": (_bool, True),
        "keepVersions": (_keep_versions, True),
        "replica": (_replica, None),
    },
    "diskcache": dict(_CACHE_COMMON, maxSize=(parse_size, 0)),
    "memorycache": dict(
        _CACHE_COMMON,
        maxItemSize=(parse_size, 10 * 1024**2),
        maxMemory=(parse_size, 256 * 1024**2),
    ),
    "filesystem": {"directory": (_string, REQUIRED)},
    "httpfetcher": {
        "sourceUrl": (_url, REQUIRED),
        "cacheNotFound": (parse_duration, 0.0),
        "cacheErrors": (parse_duration, 0.0),
        "timeout": (parse_duration, 30.0),
    },
    "imageoptimizer": {
        "source": (_string, REQUIRED),
        "sourcePath": (_source_path, ""),
        "maxWidth": (_positive_int, 4096),
        "quality": (_quality, 80),
    },
    "public": {
        "host": (_host, None),
        "port": (_port, None),
        "pathPrefix": (_path_prefix, "/"),
        "cors": (_bool, False),
        "removeQuery": (_bool, False),
        "appendWebp": (_bool, False),
        "clientCacheSeconds": (_seconds, 0),
        "source": (_string, REQUIRED),
        "sourcePath": (_source_path, ""),
    },
}
# Service types that serve files and so may be named as a source.
FILE_SERVICE_TYPES = frozenset(SERVICE_FIELDS) - {"api", "public"}


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
    s3_upload_expiry: float = DEFAULT_S3_UPLOAD_EXPIRY
    raw: dict = field(default_factory=dict, repr=False)

    def service(self, sid: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.id == sid), None)

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
            _string(value, f"{where}.name")
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


def parse(raw) -> Config:
    """
    Validate a decoded C{owncdn.json}.

    @raise ConfigError: naming the first invalid field.
    """
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    known = {"instanceName", "services", "keys", "replicationSources",
             "maxUploadSize", "headerTimeout", "s3UploadExpiry"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level field")
    instance = _string(raw.get("instanceName", "owncdn"), "instanceName")

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
        unknown = set(item) - {"id", "name", "url", "key"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field")
        sid = _check_id(item.get("id"), f"{where}.id", seen_sources)
        if "key" not in item:
            raise ConfigError(f"{where}.key: missing")
        if "url" not in item:
            raise ConfigError(f"{where}.url: missing")
        sources.append(ReplicationSource(
            sid,
            _string(item.get("name", sid), f"{where}.name"),
            _url(item["url"], f"{where}.url"),
            _string(item["key"], f"{where}.key"),
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
        unknown = set(item) - {"id", "value", "access", "name"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field")
        kid = _check_id(item.get("id"), f"{where}.id", seen_keys)
        if "name" in item:
            _string(item["name"], f"{where} ({kid}).name")
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
        s3_upload_expiry=parse_duration(raw.get("s3UploadExpiry", DEFAULT_S3_UPLOAD_EXPIRY),
                                        "s3UploadExpiry"),
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
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
