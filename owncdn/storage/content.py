"""
A version's content as a write stores it: the body cut into chunks
under the version's key and hashed on the way (MD5 and SHA-256), and
the version as a reader would open it, so that the service can keep a
small file in memory without reading it back.

Writer thread only: the chunks go in on the writer connection, in the
write's transaction.  The engine's puts and a replica's applied puts
store their bodies through L{store_content}; an upload staged while it
arrived (L{owncdn.storage.staging}) is already stored and only becomes
a L{StoredContent}.
"""

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import BinaryIO

from owncdn.digests import BodyDigests, offered_digest
from owncdn.interfaces import Change
from owncdn.storage.batch import ReadAhead
from owncdn.storage.changelog import info_from_change
from owncdn.storage.chunks import insert_chunk, read_blocks
from owncdn.storage.reads import LoadedVersion, StoredVersion


@dataclass
class StoredContent:
    """
    What storing a body found out.  C{first} and C{first_stored} are
    kept only while the body is a single chunk.
    """

    size: int
    md5: bytes
    sha256: bytes
    chunk_count: int
    first: bytes | None
    first_stored: bytes | None
    first_compressed: bool


def store_content(conn: sqlite3.Connection, key: int, body: BinaryIO,
                  chunk_size: int, digest_pool) -> StoredContent:
    """
    Insert C{body} as the chunks of C{key}, hashing it on the way.

    @param digest_pool: the thread pool that hashes a big body beside
        the inserts; without one, L{BodyDigests} starts threads.
    """
    if isinstance(body, ReadAhead) and 0 < len(body.data) <= chunk_size:
        return _store_chunk(conn, key, body)
    content = StoredContent(0, b"", b"", 0, None, None, False)
    # A big body is hashed in a thread beside the inserts; a digest
    # the body offers (the S3 layer's) is not computed again.
    with BodyDigests(body, ("md5", "sha256"), digest_pool) as digests:
        for block in read_blocks(body, chunk_size):
            digests.update(block)
            stored, compressed = insert_chunk(conn, key, content.chunk_count, block)
            if content.chunk_count == 0:
                content.first, content.first_stored = block, stored
                content.first_compressed = compressed
            else:
                # Past one chunk there is no small file and no br
                # alternate: drop them so memory stays flat.
                content.first = content.first_stored = None
            content.chunk_count += 1
            content.size += len(block)
        found = digests.finish()
    content.md5, content.sha256 = found["md5"], found["sha256"]
    return content


def _store_chunk(conn: sqlite3.Connection, key: int, body: ReadAhead) -> StoredContent:
    """
    L{store_content} of a body that is one chunk already in memory (a
    small upload): the same chunk and digests, without the reading and
    hashing machinery a body of any size needs.
    """
    data = body.data
    stored, compressed = insert_chunk(conn, key, 0, data)
    md5 = offered_digest(body.source, "md5")
    sha256 = offered_digest(body.source, "sha256")
    return StoredContent(
        len(data),
        (hashlib.md5(data) if md5 is None else md5).digest(),
        (hashlib.sha256(data) if sha256 is None else sha256).digest(),
        1, data, stored, compressed)


def written_version(change: Change, content: StoredContent, chunk_size: int,
                    small_file_limit: int) -> LoadedVersion:
    """
    The version C{change} made with C{content}, as
    L{owncdn.storage.reads.open_version} opens it: with its content
    when it is at most C{small_file_limit} bytes.
    """
    single_br = content.chunk_count == 1 and content.first_compressed
    stored = StoredVersion(
        change_id=change.id, info=info_from_change(change, current=True),
        chunk_size=chunk_size,
        br_size=len(content.first_stored) if single_br else None,
    )
    if content.size > small_file_limit:
        return LoadedVersion(stored, None, None)
    return LoadedVersion(
        stored, content.first or b"",
        content.first_stored if single_br else None,
    )
