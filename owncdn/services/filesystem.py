"""
The C{filesystem} service: files in a local directory, served and
stored.

Containment: every path is resolved (symbolic links followed, as the
kernel would) and must stay inside the directory; reads open the
resolved path with C{O_NOFOLLOW}.  A check before an open is not enough
on its own: a folder of the path could be swapped for a link to
elsewhere between the check and the open.  So every descriptor is
checked again once open, by the kernel's name for it
(C{/proc/self/fd/N}, L{FileSystem._check_opened}): a file read, the
target of a link being deleted, and the folder a put or delete works
in.  Puts and deletes then act inside that opened folder only
(C{dir_fd}), never through its path again.

Writes go to a hidden temporary file beside the target (same file
system, so the rename is atomic), which is renamed over the target only
once the whole body is on disk and its digests match; readers see the
old file or the new one, never a part.

ETags: an upload records the content's MD5 (with its SHA-256, content
type and metadata) in the extended attribute C{user.owncdn} of the file,
stamped with the file's size and modification time; reads and listings
use it while the stamp matches.  A file written by anything else, or on
a file system without extended attributes, gets an nginx-style ETag
from modification time and size instead: hashing a file on every read
or listing would cost a whole read of it.

All file I/O runs in the service's thread pool; files up to
L{SMALL_FILE_LIMIT} are read whole when opened, so a small GET costs one
thread hop.
"""

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from owncdn.errors import InvalidPath, NoSuchFile, NoSuchVersion
from owncdn.interfaces import FileInfo, IFileBody, IReadableFiles, IWritableFiles
from owncdn.storage import SMALL_FILE_LIMIT, check_digests, guess_content_type

THREADS = 4
BLOCK = 1024 * 1024
XATTR = "user.owncdn"
# Uploads in progress; never listed nor served.
TEMP_PREFIX = ".owncdn-upload-"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_FOLLOW_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
# Where the kernel names each open descriptor (Linux).
_FD_NAMES = "/proc/self/fd"
_HAVE_FD_NAMES = os.path.isdir(_FD_NAMES)


def _recorded(fd_or_path, st: os.stat_result) -> dict:
    """
    What an upload recorded about this file, if it still describes it.
    """
    try:
        record = json.loads(os.getxattr(fd_or_path, XATTR))
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(record, dict) or record.get("stamp") != [st.st_size, st.st_mtime_ns]:
        return {}
    return record


def _info(path: str, st: os.stat_result, record: dict) -> FileInfo:
    return FileInfo(
        path=path,
        size=st.st_size,
        modified=st.st_mtime_ns / 1e9,
        etag=record.get("md5") or f"{st.st_mtime_ns // 1_000_000_000:x}-{st.st_size:x}",
        content_type=record.get("type") or guess_content_type(path),
        sha256=record.get("sha256"),
        metadata=record.get("metadata") or {},
    )


@implementer(IFileBody)
class DiskFile:
    """
    An open file: small ones held in memory, others read block by
    block (C{pread}) in the service's threads from the descriptor
    opened at L{FileSystem.get}, so a file replaced meanwhile is still
    read whole and consistent.
    """

    def __init__(self, info: FileInfo, fd: int | None, data: bytes | None, run: Callable):
        self.info = info
        self._fd = fd
        self._data = data
        self._run = run

    def read(self, offset: int, length: int) -> Deferred:
        if self._data is not None:
            data = self._data
            if offset == 0 and length >= len(data):
                return succeed(data)
            return succeed(data[offset:offset + length])
        if self._fd is None:
            return fail(IOError("the file is closed"))
        return self._run(os.pread, self._fd, min(length, BLOCK), offset)

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._run(os.close, fd)


@implementer(IReadableFiles, IWritableFiles)
class FileSystem(Service):
    """
    @param directory: the root; it is created if missing.
    @param make_pool: builds the thread pool from C{(minthreads,
        maxthreads, name)}; tests pass one that runs jobs inline.
    """

    def __init__(self, directory: Path, reactor, *,
                 make_pool: Callable[[int, int, str], ThreadPool] = ThreadPool):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(directory)
        self._reactor = reactor
        self._pool = make_pool(0, THREADS, f"filesystem-{os.path.basename(self.root)}")

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self):
        super().stopService()
        self._pool.stop()

    def _run(self, work: Callable, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, work, *args)

    # Containment (these run in the pool)

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _check_opened(self, fd: int, name: str) -> None:
        """
        Make sure the descriptor C{fd}, just opened by the absolute
        C{name}, is inside the directory, wherever the kernel's walk of
        C{name} led.  Closes C{fd} when it is not.

        @raise InvalidPath: it is outside.
        """
        if _HAVE_FD_NAMES:
            where = os.readlink(f"{_FD_NAMES}/{fd}")
        else:
            # Without /proc the name must still lead to the same file:
            # a narrower window than a check before the open, not none.
            where = os.path.realpath(name)
            opened, named = os.fstat(fd), os.stat(where)
            if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
                where = ""
        if not self._inside(where):
            os.close(fd)
            raise InvalidPath("the path leads outside the service's directory")

    def _open_folder(self, folder: str) -> int:
        """
        A descriptor of C{folder}, checked to be inside the directory.

        @raise NotADirectoryError: C{folder} is not a folder.
        """
        fd = os.open(folder, _FOLDER_FLAGS)
        self._check_opened(fd, folder)
        return fd

    def _resolve(self, path: str) -> str:
        """
        The real path of C{path}, links followed.

        @raise InvalidPath: it leads outside the directory.
        """
        if os.path.isabs(path):
            raise InvalidPath("the path is absolute")
        real = os.path.realpath(os.path.join(self.root, path))
        if not self._inside(real):
            raise InvalidPath("the path leads outside the service's directory")
        return real

    def _entry(self, path: str) -> str:
        """
        Where C{path} itself lives (its folder resolved, its last
        segment not): what a put replaces and a delete removes, even
        when that is a link.
        """
        if os.path.isabs(path):
            raise InvalidPath("the path is absolute")
        folder, _, name = path.rpartition("/")
        if name.startswith(TEMP_PREFIX):
            raise InvalidPath("the name is reserved for uploads in progress")
        return os.path.join(self._resolve(folder) if folder else self.root, name)

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        if version is not None:
            return fail(NoSuchVersion("a file system keeps no versions"))
        return self._run(self._open, path)

    def _open(self, path: str) -> DiskFile:
        if path.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise NoSuchFile(f"no file {path!r}")
        real = self._resolve(path)
        fd, info = self._open_file(real, real, path, _OPEN_FLAGS)
        if info.size > SMALL_FILE_LIMIT:
            return DiskFile(info, fd, None, self._run)
        try:
            return DiskFile(info, None, _read_all(fd, info.size), self._run)
        finally:
            os.close(fd)

    def _open_file(self, name: str, absolute: str, path: str, flags: int,
                   folder_fd: int | None = None) -> tuple[int, FileInfo]:
        """
        Open the regular file C{name} (relative to C{folder_fd} if
        given; C{absolute} is the same name from the root), checked to
        be inside the directory.

        @return: the descriptor and the L{FileInfo} of C{path}.
        @raise NoSuchFile: there is no such file (or it is a folder, a
            FIFO, a dangling link, a link loop).
        @raise InvalidPath: it is outside the directory.
        """
        try:
            fd = os.open(name, flags, dir_fd=folder_fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
                raise NoSuchFile(f"no file {path!r}") from None
            raise
        self._check_opened(fd, absolute)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NoSuchFile(f"no file {path!r}")
            return fd, _info(path, st, _recorded(fd, st))
        except BaseException:
            os.close(fd)
            raise

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        return self._run(self._list, prefix, after, limit)

    def _list(self, prefix: str, after: str | None, limit: int):
        infos = []
        for path, real in self._walk(self.root, b"", prefix.encode(), (after or "").encode()):
            try:
                st = os.stat(real)
            except OSError:
                continue
            infos.append(_info(path, st, _recorded(real, st)))
            if len(infos) > limit:
                return infos[:limit], infos[limit - 1].path
        return infos, None

    def _walk(self, folder: str, relative: bytes, prefix: bytes,
              after: bytes) -> Iterator[tuple[str, str]]:
        """
        The files under C{folder} in UTF-8 byte order of their paths,
        skipping subtrees that cannot hold a path after C{after} with
        C{prefix}.  A folder sorts as its name plus C{/}, so that
        C{a-b} comes before C{a/c} as in a flat listing.  Links to
        folders are not descended (no loops); links to files outside
        the directory are left out.
        """
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError:
            return
        keyed = []
        for entry in entries:
            try:
                name = entry.name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            if entry.name.startswith(TEMP_PREFIX) or any(b < 0x20 or b == 0x7F for b in name):
                continue
            if entry.is_dir(follow_symlinks=False):
                keyed.append((relative + name + b"/", entry, True))
            elif entry.is_file():
                keyed.append((relative + name, entry, False))
        keyed.sort(key=lambda item: item[0])
        for key, entry, is_folder in keyed:
            if is_folder:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if after >= key and not after.startswith(key):
                    continue
                yield from self._walk(entry.path, key, prefix, after)
            elif key.startswith(prefix) and key > after:
                if not entry.is_symlink():
                    yield key.decode("utf-8"), entry.path
                elif self._inside(real := os.path.realpath(entry.path)):
                    yield key.decode("utf-8"), real

    # IWritableFiles

    def put(self, path: str, body: BinaryIO, content_type: str | None = None,
            metadata: dict | None = None, expected_md5: bytes | None = None,
            expected_sha256: bytes | None = None) -> Deferred:
        return self._run(self._put, path, body, content_type or guess_content_type(path),
                         dict(metadata or {}), expected_md5, expected_sha256)

    def _put(self, path: str, body: BinaryIO, content_type: str, metadata: dict,
             expected_md5: bytes | None, expected_sha256: bytes | None) -> FileInfo:
        folder, name = os.path.split(self._entry(path))
        try:
            os.makedirs(folder, exist_ok=True)
            folder_fd = self._open_folder(folder)
        except (FileExistsError, NotADirectoryError):
            raise InvalidPath("a folder of the path is a file") from None
        try:
            return self._write(folder_fd, name, path, body, content_type, metadata,
                               expected_md5, expected_sha256)
        finally:
            os.close(folder_fd)

    def _write(self, folder_fd: int, name: str, path: str, body: BinaryIO, content_type: str,
               metadata: dict, expected_md5: bytes | None,
               expected_sha256: bytes | None) -> FileInfo:
        """
        Write C{body} as C{name} in the open folder C{folder_fd}.
        """
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                raise InvalidPath("the path is a folder")
        except FileNotFoundError:
            pass
        temp = TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600, dir_fd=folder_fd)
        try:
            md5, sha256 = hashlib.md5(), hashlib.sha256()
            with os.fdopen(fd, "wb", closefd=False) as out:
                while block := body.read(BLOCK):
                    md5.update(block)
                    sha256.update(block)
                    out.write(block)
            os.fsync(fd)
            check_digests(md5.digest(), sha256.digest(), expected_md5, expected_sha256)
            os.fchmod(fd, 0o644)
            st = os.fstat(fd)
            record = {"stamp": [st.st_size, st.st_mtime_ns], "md5": md5.hexdigest(),
                      "sha256": sha256.hexdigest(), "type": content_type,
                      "metadata": metadata}
            try:
                os.setxattr(fd, XATTR, json.dumps(record).encode())
            except (OSError, AttributeError):
                pass  # no extended attributes here: ETags from mtime and size
            os.replace(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
            # The rename itself survives a power failure only once the
            # folder is on disk too.
            os.fsync(folder_fd)
        except BaseException:
            os.unlink(temp, dir_fd=folder_fd)
            raise
        finally:
            os.close(fd)
        return _info(path, st, record)

    def delete(self, path: str) -> Deferred:
        return self._run(self._delete, path)

    def _delete(self, path: str) -> FileInfo:
        """
        Remove the entry C{path} names (a link itself, not its target,
        once the target is checked to be an inside file).
        """
        target = self._entry(path)
        folder, name = os.path.split(target)
        try:
            folder_fd = self._open_folder(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchFile(f"no file {path!r}") from None
        try:
            # Links followed: a link is deleted only if it leads to a
            # file inside.
            fd, info = self._open_file(name, target, path, _FOLLOW_FLAGS, folder_fd)
            os.close(fd)
            os.unlink(name, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
        return info


def _read_all(fd: int, size: int) -> bytes:
    parts, offset = [], 0
    while offset < size:
        part = os.pread(fd, size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def build(service_config, context) -> FileSystem:
    """
    A relative C{directory} is taken from the data folder.
    """
    directory = Path(service_config.options["directory"]).expanduser()
    if not directory.is_absolute():
        directory = Path(context.data_dir) / directory
    return FileSystem(directory, context.reactor)
