"""
Test doubles for code that uses OwnCDN's services, in the spirit of
C{treq.testing}.

L{MemoryFiles} is a storage service in a dictionary: it offers the same
interfaces as the SQLite storage service and behaves the same wherever a
caller can tell (the shared contract tests in C{tests/storage_contract}
run against both), but every Deferred it returns has already fired.
L{InlineThreadPool} and L{ThreadlessClock} let the real storage service
run without threads, so its tests are deterministic too.
"""

import hashlib
import secrets
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, replace
from typing import BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from owncdn.errors import NoSuchFile, NoSuchVersion
from owncdn.interfaces import (
    Change,
    FileInfo,
    IChangeLog,
    IReadableFiles,
    IVersionedFiles,
    IWritableFiles,
)
from owncdn.paths import fold_case
from owncdn.storage import (
    DeleteMarkerVersion,
    change_id_of,
    check_digests,
    guess_content_type,
    purge_change,
    version_id,
)
from owncdn.storage.bodies import BytesBody
from owncdn.storage.changelog import info_from_change
from owncdn.storage.chunks import CHUNK_SIZE, encode_chunk


@dataclass(frozen=True)
class _Version:
    change: Change
    data: bytes
    br: bytes | None


def _info(version: _Version, current: bool) -> FileInfo:
    return info_from_change(version.change, current)


@implementer(IReadableFiles, IWritableFiles, IVersionedFiles, IChangeLog)
class MemoryFiles:
    """
    An in-memory versioned store that keeps every version.

    @param clock: gives the modification times (C{seconds()}).
    @ivar change_listeners: called with each L{Change} as it is made.
    """

    def __init__(self, clock=None, case_sensitive: bool = True,
                 chunk_size: int = CHUNK_SIZE):
        self.clock = clock if clock is not None else Clock()
        self.case_sensitive = case_sensitive
        self.chunk_size = chunk_size
        self.dbid = secrets.token_hex(16)
        self.change_listeners: list = []
        self._log: list[_Version] = []
        self._paths: dict[str, list[_Version]] = {}
        self._live: list[str] = []
        self._last_applied = 0
        self._source_dbid: str | None = None

    def _key(self, path: str) -> str:
        return path if self.case_sensitive else fold_case(path)

    def _current(self, path: str) -> _Version | None:
        versions = self._paths.get(path)
        return versions[-1] if versions else None

    def _is_live(self, path: str) -> bool:
        current = self._current(path)
        return current is not None and current.change.op == "put"

    def _record(self, version: _Version) -> _Version | None:
        """
        Log a change and apply it; for a purge, return the version it
        removed (if the path had it).
        """
        path = version.change.path
        was_live = self._is_live(path)
        self._log.append(version)
        versions = self._paths.setdefault(path, [])
        removed = None
        if version.change.op == "purge":
            removed = next((v for v in versions if v.change.version == version.change.version), None)
            if removed is not None:
                versions.remove(removed)
        else:
            versions.append(version)
        is_live = self._is_live(path)
        if is_live and not was_live:
            insort(self._live, path)
        elif was_live and not is_live:
            self._live.remove(path)
        for listener in list(self.change_listeners):
            listener(version.change)
        return removed

    def _body(self, version: _Version, current: bool) -> BytesBody:
        return BytesBody(_info(version, current), version.data, self.chunk_size, version.br)

    def _content(self, body: BinaryIO) -> tuple[bytes, bytes | None]:
        data = body.read()
        br = None
        if 0 < len(data) <= self.chunk_size:
            stored, compressed = encode_chunk(data)
            br = stored if compressed else None
        return data, br

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        path = self._key(path)
        current = self._current(path)
        if version is None:
            if current is None or current.change.op == "delete":
                return fail(NoSuchFile(f"no file {path!r}"))
            return succeed(self._body(current, True))
        found = next((v for v in self._paths.get(path, ()) if v.change.version == version), None)
        if found is None:
            return fail(NoSuchVersion(f"no version {version!r} of {path!r}"))
        if found.change.op == "delete":
            return fail(DeleteMarkerVersion(f"version {version!r} of {path!r} is a delete marker"))
        return succeed(self._body(found, found is current))

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        if limit < 1:
            return fail(ValueError(f"limit must be at least 1, not {limit}"))
        prefix = self._key(prefix)
        # Python orders str by code point, which is UTF-8 byte order.
        start = bisect_left(self._live, prefix)
        if after is not None:
            start = max(start, bisect_right(self._live, self._key(after)))
        paths = []
        for path in self._live[start:]:
            if not path.startswith(prefix) or len(paths) > limit:
                break
            paths.append(path)
        infos = [_info(self._current(p), True) for p in paths[:limit]]
        return succeed((infos, infos[-1].path if len(paths) > limit else None))

    # IWritableFiles

    def put(self, path: str, body: BinaryIO, content_type: str | None = None,
            metadata: dict | None = None, expected_md5: bytes | None = None,
            expected_sha256: bytes | None = None) -> Deferred:
        path = self._key(path)
        try:
            data, br = self._content(body)
            md5, sha256 = hashlib.md5(data).digest(), hashlib.sha256(data).digest()
            check_digests(md5, sha256, expected_md5, expected_sha256)
        except Exception:
            return fail(Failure())
        change_id = self.last_change_id() + 1
        change = Change(
            id=change_id, time=self.clock.seconds(), op="put", path=path,
            version=version_id(change_id), size=len(data), etag=md5.hex(),
            sha256=sha256.hex(), content_type=content_type or guess_content_type(path),
            metadata=dict(metadata or {}),
        )
        version = _Version(change, data, br)
        self._record(version)
        return succeed(_info(version, True))

    def delete(self, path: str) -> Deferred:
        path = self._key(path)
        current = self._current(path)
        if current is None or current.change.op == "delete":
            return fail(NoSuchFile(f"no file {path!r}"))
        change_id = self.last_change_id() + 1
        change = Change(
            id=change_id, time=self.clock.seconds(), op="delete", path=path,
            version=version_id(change_id), size=0, etag="", sha256=None,
            content_type="", metadata={},
        )
        version = _Version(change, b"", None)
        self._record(version)
        return succeed(_info(version, True))

    # IVersionedFiles

    def versions(self, path: str) -> Deferred:
        versions = self._paths.get(self._key(path))
        if not versions:
            return fail(NoSuchFile(f"no file {path!r}"))
        newest = versions[-1]
        return succeed([_info(v, v is newest) for v in reversed(versions)])

    def list_versions(self, prefix: str, after: tuple[str, str | None] | None,
                      limit: int) -> Deferred:
        if limit < 1:
            return fail(ValueError(f"limit must be at least 1, not {limit}"))
        prefix = self._key(prefix)
        infos = []
        for path in sorted(p for p in self._paths if p.startswith(prefix)):
            versions = self._paths[path]
            infos += [_info(v, v is versions[-1]) for v in reversed(versions)]
        if after is not None:
            key, version = self._key(after[0]), after[1]
            infos = [i for i in infos if i.path > key or (
                i.path == key and version is not None
                and change_id_of(i.version) < change_id_of(version))]
        following = (infos[limit - 1].path, infos[limit - 1].version) if len(infos) > limit else None
        return succeed((infos[:limit], following))

    def purge(self, path: str, version: str) -> Deferred:
        path = self._key(path)
        if not any(v.change.version == version for v in self._paths.get(path, ())):
            return succeed(None)
        change = purge_change(self.last_change_id() + 1, self.clock.seconds(), path, version)
        removed = self._record(_Version(change, b"", None))
        return succeed(_info(removed, False))

    # IChangeLog

    def last_change_id(self) -> int:
        return self._log[-1].change.id if self._log else 0

    def changes_after(self, after: int, limit: int) -> Deferred:
        return succeed([v.change for v in self._log if v.change.id > after][:limit])

    # Replication, as on StorageService

    def apply_change(self, change: Change, body: BinaryIO | None,
                     source_dbid: str | None = None, after: int | None = None) -> Deferred:
        """
        Record a change of the primary under its ID and version.
        """
        if change.id <= self.last_change_id():
            return fail(ValueError(
                f"change {change.id} is not after change {self.last_change_id()}"))
        if after is not None and after != self._last_applied:
            return fail(ValueError(f"change {change.id} follows change {after}, "
                                   f"but the last applied is change {self._last_applied}"))
        change = replace(change, path=self._key(change.path))
        data, br = self._content(body) if body is not None else (b"", None)
        if change.op == "put" and body is not None:
            try:
                check_digests(
                    hashlib.md5(data).digest(), hashlib.sha256(data).digest(),
                    bytes.fromhex(change.etag),
                    bytes.fromhex(change.sha256) if change.sha256 else None,
                )
            except Exception:
                return fail(Failure())
        self._record(_Version(change, data, br))
        self._last_applied = change.id
        if source_dbid is not None:
            self._source_dbid = source_dbid
        return succeed(None)

    def last_applied_id(self) -> int:
        return self._last_applied

    def source_dbid(self) -> str | None:
        return self._source_dbid


class ThreadlessClock(Clock):
    """
    A L{Clock} that is also enough of a reactor for
    C{deferToThreadPool}: "calling from a thread" calls at once.
    """

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)


class InlineThreadPool:
    """
    A thread pool that runs each job at once in the calling thread.

    While L{hold} is in effect the results are kept back until
    L{release}, as if the job had run in a thread whose answer had not
    reached the reactor yet.

    @ivar jobs: how many jobs it has run (tests use it to check that
        something did not need a thread).
    """

    def __init__(self, minthreads: int = 0, maxthreads: int = 1, name: str = ""):
        self.name = name
        self.started = False
        self.jobs = 0
        self._held: list | None = None

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for on_result, success, result in held:
            on_result(success, result)

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs) -> None:
        self.jobs += 1
        try:
            success, result = True, func(*args, **kwargs)
        except BaseException:
            success, result = False, Failure()
        if self._held is not None:
            self._held.append((on_result, success, result))
        else:
            on_result(success, result)
