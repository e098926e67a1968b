"""
The one place that decides whether a file path is acceptable.
"""

import re

from owncdn.errors import InvalidPath

MAX_PATH_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_path(raw: str) -> str:
    """
    Validate a client-supplied file path and return it without its
    leading C{/}.

    @raise InvalidPath: for C{.} or C{..} segments, NUL or other control
        characters, an empty path, or more than 1024 bytes of UTF-8.
    """
    path = raw[1:] if raw.startswith("/") else raw
    # The common case in one pass each: ASCII (so as many bytes as
    # characters), no control character, and no segment that starts
    # with a dot (so no "." or ".." segment).
    if (path and len(path) <= MAX_PATH_BYTES and path.isascii() and not path.startswith(".")
            and "/." not in path and _CONTROL.search(path) is None):
        return path
    if not path:
        raise InvalidPath("the path is empty")
    if _CONTROL.search(path):
        raise InvalidPath("the path contains a control character")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath("the path is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidPath("the path contains a '.' or '..' segment")
    return path


def fold_case(path: str) -> str:
    """
    The lookup form of a path on a case-insensitive service: the part
    before C{?} lower-cased, the query kept as it is.
    """
    head, sep, query = path.partition("?")
    return head.lower() + sep + query
