"""
What a service can do.

Every service type (storage, caches, file system, fetcher, image
optimizer) implements the file interfaces it can honour; the web layer
(standard mode, S3 mode, public bindings) only ever talks to these
interfaces, so a new service type plugs in without touching the web.

Paths handed to these methods are already validated and normalised by
L{owncdn.paths.normalize_path}: no leading C{/}, no C{.} or C{..}
segments, no control characters, at most 1024 bytes.  Case folding for
case-insensitive services is the service's own business.
"""

from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class FileInfo:
    """
    What is known about one version of one file.

    @ivar modified: seconds since the epoch (float, sub-second kept).
    @ivar etag: hex MD5 of the stored (decoded) bytes, unquoted.
    @ivar version: the version ID (storage services), else C{None}.
    @ivar deleted: C{True} for a delete marker.
    @ivar current: C{True} when this is the newest version of the path.
    @ivar metadata: extra headers kept with the file (lower-case names),
        such as C{cache-control} or C{x-amz-meta-*}.
    """

    path: str
    size: int
    modified: float
    etag: str
    content_type: str
    version: str | None = None
    sha256: str | None = None
    deleted: bool = False
    current: bool = True
    metadata: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Change:
    """
    One numbered entry of a storage service's change log.

    @ivar id: the change ID, monotonic per database.
    @ivar time: seconds since the epoch.
    @ivar op: C{"put"}, C{"delete"} or C{"purge"} (the version named by
        C{version} was removed for good; see L{IVersionedFiles.purge}).
    """

    id: int
    time: float
    op: str
    path: str
    version: str
    size: int
    etag: str
    sha256: str | None
    content_type: str
    metadata: dict = field(default_factory=dict, compare=False)


class IFileBody(Interface):
    """
    The content of one file version, opened for reading.

    Returned by L{IReadableFiles.get}; consumed by the web layer's
    response producers, which pull one block at a time.
    """

    info = Attribute("The L{FileInfo} of the version being read.")

    def read(offset: int, length: int):
        """
        Read up to C{length} bytes starting at C{offset}.

        Random-access bodies accept any offset; callers read forward
        sequentially, so streaming bodies only need to honour that.

        @return: a Deferred that fires with the bytes (fewer than
            C{length} at a chunk boundary; C{b""} only at the end).
        """

    def alternate(encoding: str):
        """
        The stored bytes of this version in a content-coding, if the
        service holds them that way.

        @param encoding: a content-coding such as C{"br"}.
        @return: an L{IFileBody} whose C{info.size} is the encoded size,
            or C{None} when this version is not stored in that coding.
        """

    def close():
        """
        Release what the body holds (a source connection, a cursor).
        Safe to call more than once.
        """


class IReadableFiles(Interface):
    """
    A service that serves files: every service type.

    Called by the standard mode (C{getfile}, C{filelist}), S3 mode and
    public bindings.
    """

    def get(path: str, version: str | None = None, query: str = ""):
        """
        Open one file for reading.

        @param version: a version ID, or C{None} for the current one.
        @param query: the request's query string, without C{?}; services
            that do not use it ignore it.
        @return: a Deferred that fires with an L{IFileBody}, or fails
            with L{owncdn.errors.NoSuchFile} (also when the current
            version is a delete marker) or
            L{owncdn.errors.NoSuchVersion}.
        """

    def list(prefix: str, after: str | None, limit: int):
        """
        List current files in path order (UTF-8 byte order).

        @param after: exclusive start path, for paging.
        @return: a Deferred that fires with C{(infos, next)}, where
            C{next} is the last path returned when more files follow,
            else C{None}.
        """


class IWritableFiles(Interface):
    """
    A service that stores files: storage and file system services.
    """

    def put(
        path: str,
        body,
        content_type: str | None = None,
        metadata: dict | None = None,
        expected_md5: bytes | None = None,
        expected_sha256: bytes | None = None,
    ):
        """
        Store a new version of C{path} from the file object C{body}.

        The body is read off the reactor thread, block by block; the
        caller keeps it open until the Deferred fires.  Nothing becomes
        visible unless the whole body was stored and every expected
        digest matched.

        @param content_type: stored as given; C{None} means guess it
            from the path's extension.
        @param expected_md5: raw MD5 digest the body must have.
        @param expected_sha256: raw SHA-256 digest the body must have.
        @return: a Deferred that fires with the new L{FileInfo}, or
            fails with L{owncdn.errors.BadDigest} or
            L{owncdn.errors.ReadOnlyReplica}.
        """

    def delete(path: str):
        """
        Delete the current version of C{path}.

        @return: a Deferred that fires with the L{FileInfo} of the
            delete marker (storage) or of the deleted file, or fails
            with L{owncdn.errors.NoSuchFile}.
        """


class IVersionedFiles(Interface):
    """
    A service that keeps old versions: storage services.
    """

    def versions(path: str):
        """
        @return: a Deferred that fires with the list of L{FileInfo} of
            every kept version of C{path}, delete markers included,
            newest first; or fails with L{owncdn.errors.NoSuchFile} when
            the path has none.
        """

    def list_versions(prefix: str, after, limit: int):
        """
        List the kept versions of every path under C{prefix}, delete
        markers included: paths in UTF-8 byte order, and each path's
        versions newest first (S3's ListObjectVersions order).

        @param after: C{None} to start at the beginning; C{(path, None)}
            to start after every version of C{path}; C{(path, version)}
            to start with the versions of C{path} older than C{version}.
        @return: a Deferred that fires with C{(infos, next)}, where
            C{next} is the C{(path, version)} of the last L{FileInfo}
            returned when more follow, else C{None}.
        """

    def purge(path: str, version: str):
        """
        Remove one version of C{path} for good, as S3's DeleteObject with
        a C{versionId} does; when it was the newest version, the one
        before it (a file or a delete marker) becomes current.  Recorded
        as a C{"purge"} L{Change}, which replicas apply.

        @return: a Deferred that fires with the L{FileInfo} the removed
            version had (C{deleted} for a delete marker), or C{None}
            when C{path} has no such version; or fails with
            L{owncdn.errors.ReadOnlyReplica}.
        """


class IChangeLog(Interface):
    """
    The numbered change log of a storage service, read by C{syncnext}
    and by the replica poller.
    """

    dbid = Attribute("Text that identifies this database; it changes when "
                     "the database is replaced or rewound.")

    def last_change_id() -> int:
        """
        @return: the newest change ID (0 for an empty log), known in
            memory without touching the database.
        """

    def changes_after(after: int, limit: int):
        """
        @return: a Deferred that fires with up to C{limit} L{Change}s
            whose ID is greater than C{after}, in ID order.
        """


class IRevalidatable(Interface):
    """
    A source that can tell whether a copy a cache holds is still
    current without sending the bytes again: HTTP fetchers, through a
    conditional request to the origin.

    Called by cache services when a cached item is older than their
    C{refresh} time; a source without it is revalidated by a plain
    L{IReadableFiles.get} and a comparison of ETags.
    """

    def revalidate(path: str, held: FileInfo, query: str = ""):
        """
        Ask whether C{held} is still the current content of C{path}.

        @param held: the L{FileInfo} of the copy the caller holds, as
            this service gave it (its C{etag} and C{metadata} carry the
            validators).
        @param query: as for L{IReadableFiles.get}.
        @return: a Deferred that fires with C{None} when C{held} is
            still current, else with an L{IFileBody} of the new
            content; or fails as L{IReadableFiles.get} does.
        """


class IHeadable(Interface):
    """
    A service that can describe a file without sending its content,
    where opening it costs a transfer: HTTP fetchers (a C{HEAD} request
    to the origin), and caches in front of one (a held item answers as
    L{IReadableFiles.get} does; on a miss they ask their source's
    C{head} and keep nothing, so a C{HEAD} never downloads an item).

    Called by the web layer (public bindings, C{getfile}) for a client's
    C{HEAD}; a service without it is asked with L{IReadableFiles.get}
    and its body is closed unread.
    """

    def head(path: str, version: str | None = None, query: str = ""):
        """
        Describe one file, as L{IReadableFiles.get} would open it.

        @return: a Deferred that fires with an L{IFileBody} whose
            C{info} is the file's (its C{size} included); its content
            may not be readable (a read may fail), so callers send only
            headers.  Fails as L{IReadableFiles.get} does.
        """


class ICache(Interface):
    """
    A cache service (memory or disk).
    """

    def flush():
        """
        Drop every cached item.

        @return: a Deferred that fires with the number of items removed.
        """

    def stats() -> dict:
        """
        The cache's counters and sizes, for C{servicelist} and
        C{owncdn status}: at least C{hits}, C{misses} (requests the
        cache could not answer from what it holds), C{sourceRequests}
        (calls it made to its source), C{items} and C{bytes}.
        """
