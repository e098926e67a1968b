"""
What each field of C{owncdn.json} may hold: the value parsers (durations,
sizes, ports, URLs, ...) and, for every service type, its fields with
their defaults.  L{owncdn.config} applies them to a whole file.
"""

import math
import re
from urllib.parse import urlsplit

# \Z, not $: $ also matches before a trailing newline.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,63}\Z")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


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


def string_value(value, where):
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
    value = string_value(value, where)
    return None if value in ("*", "") else value.lower()


def _source_path(value, where):
    value = string_value(value, where).strip("/")
    if any(seg in ("", ".", "..") for seg in value.split("/")) and value:
        raise ConfigError(f"{where}: {value!r} must be whole path segments")
    return value


def _path_prefix(value, where):
    value = string_value(value, where)
    if not value.startswith("/"):
        raise ConfigError(f"{where}: {value!r} must start with /")
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ConfigError(f"{where}: {value!r} must not contain . or .. segments")
    return value


def _keep_versions(value, where):
    if isinstance(value, bool):
        return value
    return parse_duration(value, where)


def url_value(value, where):
    value = string_value(value, where)
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


def no_unknown_fields(value: dict, known: set, where: str) -> None:
    """
    @raise ConfigError: naming the first (in sorted order) field of
        C{value} that is not in C{known}.
    """
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field")


def _replica(value, where):
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be an object with source and sid")
    no_unknown_fields(value, {"source", "sid"}, where)
    for name in ("source", "sid"):
        if name not in value:
            raise ConfigError(f"{where}.{name}: missing")
        if not ID_PATTERN.match(str(string_value(value[name], f"{where}.{name}"))):
            raise ConfigError(f"{where}.{name}: {value[name]!r} is not a valid ID")
    return dict(value)


# For each service type: field -> (parser, default).  A default of
# REQUIRED makes the field mandatory.
REQUIRED = object()
_CACHE_COMMON = {
    "source": (string_value, REQUIRED),
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
    "filesystem": {"directory": (string_value, REQUIRED)},
    "httpfetcher": {
        "sourceUrl": (url_value, REQUIRED),
        "cacheNotFound": (parse_duration, 0.0),
        "cacheErrors": (parse_duration, 0.0),
        "timeout": (parse_duration, 30.0),
    },
    "imageoptimizer": {
        "source": (string_value, REQUIRED),
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
        "source": (string_value, REQUIRED),
        "sourcePath": (_source_path, ""),
    },
}
# Service types that serve files and so may be named as a source.
FILE_SERVICE_TYPES = frozenset(SERVICE_FIELDS) - {"api", "public"}
