"""
The versioned object store behind C{storage} services.

This module holds the rules every implementation shares (the SQLite
engine in L{owncdn.storage.engine} and the in-memory fake in
L{owncdn.testing}), so that both behave the same where a client can see
it: how version IDs look, which content type a file gets when the
uploader gave none, and when an upload's digests are refused.
"""

import mimetypes
from functools import lru_cache

from owncdn.errors import BadDigest, NoSuchVersion
from owncdn.interfaces import Change

# Files up to this size are answered from memory by the service (and
# read in one piece when opened), which is what makes small GETs cheap.
SMALL_FILE_LIMIT = 64 * 1024

# A private table, not the module-level one: mimetypes.guess_type also
# reads /etc/mime.types, which differs between machines, and a stored
# content type must not depend on where the daemon happens to run.
_TYPES = mimetypes.MimeTypes()
# What browsers and CDNs expect today where Python 3.11's table is silent
# or dated (RFC 9239 made text/javascript the JavaScript type).
_TYPE_OVERRIDES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".md": "text/markdown",
    ".map": "application/json",
}
# A compressed file is stored as what it is, not as what it unpacks to:
# nothing here sets Content-Encoding on a .tar.gz.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class DeleteMarkerVersion(NoSuchVersion):
    """
    The version asked for is a delete marker, which has no content.

    A L{NoSuchVersion} for callers that do not care (standard mode
    answers 404 NoSuchVersion); S3 mode can tell it apart and answer 405
    MethodNotAllowed with C{x-amz-delete-marker: true}, as S3 does.
    """


def version_id(change_id: int) -> str:
    """
    The version ID of the version written by change C{change_id}.

    Zero-padded so that version IDs sort like the changes that made
    them; opaque to clients, and carried unchanged to replicas.
    """
    return f"{change_id:012d}"


def change_id_of(version: str) -> int:
    """
    The change ID that made version C{version}, the inverse of
    L{version_id}.

    @raise ValueError: C{version} is not a version ID.
    """
    if not (version.isascii() and version.isdigit()):
        raise ValueError(f"{version!r} is not a version ID")
    return int(version)


def purge_change(change_id: int, now: float, path: str, version: str) -> Change:
    """
    The change that removes version C{version} of C{path} for good.
    """
    return Change(id=change_id, time=now, op="purge", path=path, version=version,
                  size=0, etag="", sha256=None, content_type="", metadata={})


def guess_content_type(path: str) -> str:
    """
    The content type for C{path} when the uploader gave none: from its
    extension, else C{application/octet-stream}.
    """
    name = path.partition("?")[0].rsplit("/", 1)[-1]
    stem_end = name.find(".", len(name) - len(name.lstrip(".")))
    # The type depends only on the extensions (splitext skips leading
    # dots), so names that share them share one lookup.
    return _type_of_extensions("x" + name[stem_end:]) if stem_end > 0 else DEFAULT_CONTENT_TYPE


@lru_cache(maxsize=1024)
def _type_of_extensions(name: str) -> str:
    dot = name.rfind(".")
    if dot > 0:
        override = _TYPE_OVERRIDES.get(name[dot:].lower())
        if override:
            return override
    content_type, encoding = _TYPES.guess_type(name, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return content_type or DEFAULT_CONTENT_TYPE


def check_digests(
    md5: bytes,
    sha256: bytes,
    expected_md5: bytes | None,
    expected_sha256: bytes | None,
) -> None:
    """
    @raise BadDigest: a digest the uploader announced does not match
        what arrived.
    """
    if expected_md5 is not None and expected_md5 != md5:
        raise BadDigest(
            f"the body's MD5 is {md5.hex()}, not {expected_md5.hex()} as announced"
        )
    if expected_sha256 is not None and expected_sha256 != sha256:
        raise BadDigest(
            f"the body's SHA-256 is {sha256.hex()}, "
            f"not {expected_sha256.hex()} as announced"
        )
