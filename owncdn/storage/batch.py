"""
Group commit: several writes in one transaction.

A commit costs an fsync of the WAL and a few page writes, more than a
small put costs otherwise, so the storage engine makes every write that
is waiting when the writer thread gets to it in one transaction, with
one commit.  A write that fails (a bad digest, a missing file) is undone
alone and gets its own error, while the writes around it still commit.
Writes rarely fail, so a group first runs without savepoints: a
savepoint makes SQLite copy every page a write touches into a
sub-journal, which costs a small put as much as everything else it
does.  Only when one of them fails is the transaction rolled back and
the group made again, each write in a savepoint of its own (which gives
the same result: each write sees exactly the writes before it that
succeeded).  Only writes whose content is
at most one chunk share a transaction, and a shared transaction holds at
most L{GROUP_BYTES} of content: a big upload commits on its own, so it
neither waits for the small writes behind it nor makes the small writes
in front of it wait for its bytes.  docs/storage.md has the figures.
"""

import io
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import BinaryIO, NamedTuple

from owncdn.digests import Digest, offered_digest
from owncdn.storage.chunks import first_chunk

# Content one shared transaction holds at most: enough for a few hundred
# small files, little enough that the first of them is not acknowledged
# much later than it would be alone.
GROUP_BYTES = 8 * 1024 * 1024

# What became of one write: (True, its result) or (False, its exception).
Outcome = tuple[bool, object]


class Write(NamedTuple):
    """
    One write for L{owncdn.storage.engine.StorageEngine.write_batch}.

    @ivar make: does the write inside the batch's transaction, given the
        writer connection and the content (C{body}, re-wrapped because
        its first chunk was read ahead: a L{ReadAhead} when that was all
        of it); returns what the caller gets once the transaction
        committed.
    @ivar body: the content it stores, C{None} for writes without.
    @ivar durable: whether its commit must reach the disk before it is
        answered.  Only writes nobody is told about may say no (a
        staged upload's chunks: the put that takes them commits with
        an fsync of the WAL, which covers them too); a transaction of
        such writes alone commits without an fsync.
    @ivar big: its content is known to be more than a chunk (an upload
        stored as it arrived), so it gets a transaction of its own
        without its body being read ahead.
    """

    make: Callable[[sqlite3.Connection, BinaryIO | None], object]
    body: BinaryIO | None = None
    durable: bool = True
    big: bool = False


class _Ready(NamedTuple):
    write: Write
    body: BinaryIO | None
    error: Exception | None


class ReadAhead(io.BytesIO):
    """
    A whole body of at most one chunk, read ahead into memory by
    L{groups}: C{data} holds its bytes (a writer can take them without
    reading), and the running digests the original body kept of them
    are still offered (L{owncdn.digests.offered_digest}), so they are
    not computed again.
    """

    def __init__(self, data: bytes, source: object):
        super().__init__(data)
        self.data = data
        # The body it was read from.
        self.source = source

    def running_digest(self, algorithm: str) -> Digest | None:
        return offered_digest(self.source, algorithm)


class WriteFailed(Exception):
    """
    A write of a group made without savepoints failed: the transaction
    must be rolled back.
    """

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


# Opens the writer's transaction: a context manager that gives the
# connection and commits on leaving (rolls back on an exception).
Begin = Callable[[], AbstractContextManager[sqlite3.Connection]]


def write_batch(begin: Begin, writes: Sequence[Write], chunk_size: int,
                committed: Callable[[list[Outcome]], object],
                fsync_commits: Callable[[bool], object]) -> None:
    """
    Make C{writes} in order, in the transactions L{groups} splits them
    into; see L{owncdn.storage.engine.StorageEngine.write_batch}.

    @param fsync_commits: turns the fsync of the next commits off
        (C{False}) for a transaction of writes that are not
        C{durable}, and back on (C{True}) after it.
    """
    for group in groups(writes, chunk_size):
        if any(ready.write.durable for ready in group):
            committed(_make_transaction(begin, group))
            continue
        fsync_commits(False)
        try:
            outcomes = _make_transaction(begin, group)
        finally:
            fsync_commits(True)
        committed(outcomes)


def _make_transaction(begin: Begin, group: list[_Ready]) -> list[Outcome]:
    # Without savepoints first; with them only when a write failed.  A
    # write alone needs none.
    try:
        with begin() as conn:
            return make_group(conn, group, isolated=False)
    except WriteFailed as failed:
        if len(group) == 1:
            return [(False, failed.error)]
    except Exception as error:
        return [(False, error)] * len(group)
    rewind(group)
    try:
        with begin() as conn:
            return make_group(conn, group, isolated=True)
    except Exception as error:
        return [(False, error)] * len(group)


def groups(writes: Sequence[Write], chunk_size: int,
           group_bytes: int = GROUP_BYTES) -> Iterator[list[_Ready]]:
    """
    Split C{writes}, in order, into the groups that share a transaction.

    Each body's first chunk is read here (lazily: a group is complete
    before the body of the write after it is touched), which is how a
    body of more than one chunk is recognised whatever kind of reader it
    is.  A body that fails to read (a reader that checks digests raises
    them at its end) makes its write fail without touching the database.
    """
    group: list[_Ready] = []
    size = 0
    for write in writes:
        try:
            if write.body is None:
                body, length = None, 0
            elif write.big:
                body, length = write.body, None
            else:
                body, length = first_chunk(write.body, chunk_size)
                if length is not None:
                    body = ReadAhead(body.getvalue(), write.body)
        except Exception as error:
            group.append(_Ready(write, None, error))
            continue
        alone = length is None
        if group and (alone or size + length > group_bytes):
            yield group
            group, size = [], 0
        group.append(_Ready(write, body, None))
        size += length or 0
        if alone:
            yield group
            group, size = [], 0
    if group:
        yield group


def make_group(conn: sqlite3.Connection, group: list[_Ready], isolated: bool) -> list[Outcome]:
    """
    Make each write of C{group} in the transaction open on C{conn}.

    @param isolated: make each write in a savepoint of its own, so that
        one that raises is rolled back alone; otherwise the first that
        raises stops the group with L{WriteFailed}.
    @return: each write's outcome, in order.
    """
    outcomes: list[Outcome] = []
    for ready in group:
        if ready.error is not None:
            outcomes.append((False, ready.error))
        elif not isolated:
            try:
                outcomes.append((True, ready.write.make(conn, ready.body)))
            except Exception as error:
                raise WriteFailed(error) from error
        else:
            outcomes.append(_in_savepoint(conn, ready))
    return outcomes


def rewind(group: list[_Ready]) -> None:
    """
    Make the bodies of C{group} readable again from their start, to make
    the group a second time.  Groups of more than one write hold only
    content read ahead into memory.
    """
    for ready in group:
        if ready.body is not None:
            ready.body.seek(0)


def _in_savepoint(conn: sqlite3.Connection, ready: _Ready) -> Outcome:
    conn.execute("SAVEPOINT write")
    try:
        result = ready.write.make(conn, ready.body)
    except Exception as error:
        # If SQLite already rolled the whole transaction back (disk
        # full, I/O error) this raises "no such savepoint", failing
        # the group: its earlier writes are gone too.
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        return False, error
    conn.execute("RELEASE write")
    return True, result
