"""
API keys: who is calling, and what they may do to which service.
"""

import hashlib
import hmac

from owncdn.config import KeyConfig
from owncdn.errors import AccessDenied, InvalidKey

LEVELS = {"none": 0, "read": 1, "write": 2}


def _digest(value: str | bytes) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return hashlib.sha256(value).digest()


class KeyRing:
    """
    The configured keys, looked up by value (standard mode) or by ID
    (S3 mode).

    Lookup by value goes through a SHA-256 of the value, so the dict
    probe reveals nothing an attacker can steer, and the final equality
    check is constant-time.
    """

    def __init__(self, keys: list[KeyConfig]):
        # digest -> (the value as bytes, key): every standard-mode
        # request looks a key up, so nothing is encoded per request.
        self._by_digest = {_digest(k.value): (k.value.encode(), k) for k in keys}
        self._by_id = {k.id: k for k in keys}

    def by_value(self, value: bytes | None) -> KeyConfig:
        """
        @raise InvalidKey: no key has this value.
        """
        if value is None:
            raise InvalidKey("no x-owncdn-key header")
        found = self._by_digest.get(hashlib.sha256(value).digest())
        if found is None or not hmac.compare_digest(found[0], value):
            raise InvalidKey("the key is not valid")
        return found[1]

    def by_id(self, key_id: str) -> KeyConfig | None:
        return self._by_id.get(key_id)


def access_level(key: KeyConfig, sid: str) -> str:
    """
    C{"none"}, C{"read"} or C{"write"}: what C{key} may do to C{sid}.
    """
    if isinstance(key.access, str):
        return key.access
    return key.access.get(sid, "none")


def require(key: KeyConfig, sid: str, level: str) -> None:
    """
    @raise AccessDenied: C{key} has less than C{level} on C{sid}.
    """
    if LEVELS[access_level(key, sid)] < LEVELS[level]:
        raise AccessDenied(f"the key {key.id} may not {level} service {sid!r}")
