"""
Big uploads stored while they arrive.

A body of more than one chunk is not spooled to a file and copied into
the database once complete: as each chunk arrives it is inserted, in a
short transaction of its own queued like any other write, under a
*staged content* ID that no change refers to yet (chunks key
C{-staged_id}, a row in C{staged}).  The put that completes the upload
then only checks the digests and records its change with
C{content_id = -staged_id}: the chunks are never copied.  So the single
writer thread is never held by a slow client (it inserts what has
arrived, between other writes), the bytes are written once to the
database (no spool file), and storing overlaps receiving.

Staged content nobody completes (the client went away, a digest did
not match, the daemon died) is deleted: by the service as soon as it is
given up, and at every start for whatever a crash left.  Nothing refers
to it before the put's commit, so no half-written object is ever
visible.  docs/storage.md ("Staged uploads") has the reasoning and the
figures.

This module holds the engine's side (writer thread).  The body object
the web layer writes into is L{owncdn.services.staging.StagedBody}.
"""

import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from owncdn.digests import Digest
from owncdn.storage.batch import Write
from owncdn.storage.chunks import insert_chunk

# Staging commits a few chunks at a time; checkpointing after each would
# copy the body into the database file while it is still arriving, on
# the upload's time.  So the checkpoint is held back while any upload is
# being staged, and made after its put, as after a big write -- unless
# the WAL has grown by this much meanwhile (many or endless uploads).
STAGING_CHECKPOINT_BYTES = 4 * 1024 * 1024 * 1024


class StagedContent(Protocol):
    """
    What a staged body tells the engine when its put is made.

    @ivar owner: the storage engine it was staged in.
    @ivar staged_id: the staged content's ID (chunks key C{-staged_id}).
    @ivar size: the body's length.
    @ivar chunk_count: how many chunks were staged.
    """

    owner: object
    staged_id: int
    size: int
    chunk_count: int

    def finish(self) -> Mapping[str, Digest]:
        """
        Wait for the digests of the whole body (computed as it arrived).

        @return: the finished running digests, by algorithm (at least
            C{"md5"} and C{"sha256"}).
        @raise Exception: the body is incomplete, or staging failed.
        """


def staged_of(body: object) -> StagedContent | None:
    """
    The staged content behind C{body}, when it is a staged body or a
    reader that passes one through unchanged (the S3 payload of a plain
    signed body); else C{None}.
    """
    offer = getattr(body, "staged_content", None)
    return None if offer is None else offer()


def content_key(staged_id: int) -> int:
    """
    The chunks key of staged content: negative, so never a change ID.
    """
    return -staged_id


def next_staged_id(conn: sqlite3.Connection) -> int:
    """
    The first staged ID not handed out yet (AUTOINCREMENT remembers).
    """
    return conn.execute(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'staged'), 0) + 1"
    ).fetchone()[0]


def stage_chunk(conn: sqlite3.Connection, staged_id: int, index: int, block: bytes) -> None:
    """
    Insert chunk C{index} of staged content C{staged_id}.  Every call
    makes sure the C{staged} row exists, so that whatever chunks commit
    are found again by L{discard_all}.
    """
    conn.execute("INSERT OR IGNORE INTO staged (id, created) VALUES (?, ?)",
                 (staged_id, time.time()))
    insert_chunk(conn, content_key(staged_id), index, block)


def adopt(conn: sqlite3.Connection, content: StagedContent) -> None:
    """
    Check that staged content C{content} is stored whole and take it out
    of C{staged}, in the transaction of the put that points to it.

    @raise ValueError: chunks are missing (a staging write failed).
    """
    key = content_key(content.staged_id)
    count = conn.execute("SELECT count(*) FROM chunks WHERE change_id = ?", (key,)).fetchone()[0]
    gone = conn.execute("DELETE FROM staged WHERE id = ?", (content.staged_id,)).rowcount == 0
    if gone or count != content.chunk_count:
        raise ValueError(f"staged content {content.staged_id} is incomplete: "
                         f"{count} of {content.chunk_count} chunks stored")


def discard(conn: sqlite3.Connection, staged_id: int) -> None:
    """
    Delete staged content C{staged_id} that no put took.
    """
    conn.execute("DELETE FROM chunks WHERE change_id = ?", (content_key(staged_id),))
    conn.execute("DELETE FROM staged WHERE id = ?", (staged_id,))


def discard_all(conn: sqlite3.Connection) -> int:
    """
    Delete every staged content left (by a crash): at start-up, when no
    upload is in progress.

    @return: how many there were.
    """
    ids = [row[0] for row in conn.execute("SELECT id FROM staged")]
    for staged_id in ids:
        discard(conn, staged_id)
    return len(ids)


class StagedUploads:
    """
    The storage engine's side of the uploads being staged: the writes
    that store and discard their chunks, the put's adoption of one, and
    whether any is in progress (which holds the WAL checkpoint back).

    @param defer_checkpoint: called with the connection in a write's
        transaction, to leave the WAL checkpoint until after the write.
    """

    def __init__(self, defer_checkpoint: Callable[[sqlite3.Connection], None]):
        self._defer_checkpoint = defer_checkpoint
        self._active: set[int] = set()
        self._bytes = 0

    def hold_checkpoint(self) -> bool:
        """
        Whether the WAL checkpoint should wait (an upload is being
        staged, and the WAL has not grown too much meanwhile).
        """
        return bool(self._active) and self._bytes < STAGING_CHECKPOINT_BYTES

    def checkpointed(self) -> None:
        self._bytes = 0

    def stage_write(self, staged_id: int, index: int, block: bytes) -> Write:
        """
        Store chunk C{index} of a body that is still arriving, under
        staged content C{staged_id}.  Nobody is answered on it, so it
        need not be durable: the put that takes it is.
        """
        def make(conn: sqlite3.Connection, _: None) -> None:
            stage_chunk(conn, staged_id, index, block)
            self._active.add(staged_id)
            self._bytes += len(block)
            self._defer_checkpoint(conn)

        return Write(make, durable=False)

    def discard_write(self, staged_id: int) -> Write:
        """
        Delete staged content no put took.  Lost with the power, it is
        made again at the next start.
        """
        def make(conn: sqlite3.Connection, _: None) -> None:
            discard(conn, staged_id)
            self._active.discard(staged_id)

        return Write(make, durable=False)

    def take(self, conn: sqlite3.Connection, staged: StagedContent,
             body: object) -> Mapping[str, Digest]:
        """
        In the transaction of the put of C{body}: wait for the digests
        of its staged content, have the body reader check them if it
        checks any (the S3 payload's signed SHA-256, C{Content-MD5},
        C{x-amz-checksum-*}), and take the chunks out of C{staged} for
        the change to point to.

        @return: the digests, by algorithm.
        @raise Exception: what the check raised, or the content is
            incomplete.
        """
        digests = staged.finish()
        check = getattr(body, "check_staged", None)
        if check is not None:
            check(digests)
        adopt(conn, staged)
        self._active.discard(staged.staged_id)
        return digests
