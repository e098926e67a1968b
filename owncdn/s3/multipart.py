"""
Multipart uploads in progress, kept as files in the data folder until
they are completed into one object or abandoned.

Layout: C{<root>/<upload id>/upload.json} says which bucket and key the
upload is for and what the object will carry (content type, metadata);
each part is one file C{<part number, 5 digits>.<hex MD5>}, written
under a temporary name and renamed into place, so a part is either
whole or absent and its ETag is in its name.  Uploading a part number
again replaces it.

Everything here blocks (file I/O): the web layer runs it in a thread.
A part never passes through memory whole: it is read from the request
body block by block to verify and hash it, then the spooled body itself
becomes the part file (a hard link, no copy) when it holds the part as
sent, else it is copied block by block; a completed upload is read back
by L{PartsReader} the same way while the storage service stores it.
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from owncdn.digests import BodyDigests
from owncdn.durable import sync_file, sync_folder
from owncdn.s3.errors import S3Error

BLOCK = 1024 * 1024
# S3's limits: every part but the last at least 5 MiB, parts 1..10000.
MIN_PART_SIZE = 5 * 1024 * 1024
# Uploads neither completed nor aborted are removed after this long, as
# an S3 lifecycle rule "AbortIncompleteMultipartUpload" would.
UPLOAD_EXPIRY = 7 * 24 * 3600.0
# How often expired uploads are swept out (web.s3multipart.UploadExpiry,
# a timer service: the one place expiry happens).
SWEEP_INTERVAL = 3600.0
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"([0-9]{5})\.([0-9a-f]{32})")
_DESCRIPTION = "upload.json"


@dataclass(frozen=True)
class Upload:
    """
    One multipart upload in progress.

    @ivar initiator: the ID of the key that created it.
    """

    upload_id: str
    bucket: str
    key: str
    initiated: float
    initiator: str
    content_type: str | None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    size: int
    modified: float


def multipart_etag(parts: list[Part]) -> str:
    """
    S3's ETag of a multipart object: the MD5 of the parts' binary MD5s,
    then C{-} and the number of parts.
    """
    digest = hashlib.md5(b"".join(bytes.fromhex(part.etag) for part in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


class MultipartStore:
    """
    The uploads in progress under C{root}, for every bucket.
    """

    def __init__(self, root: Path, expiry: float = UPLOAD_EXPIRY):
        self.root = Path(root)
        self.expiry = expiry
        # Taken around the rename that installs a part and the removal
        # of the part it replaces, so two uploads of one part number
        # cannot remove each other.
        self._install = threading.Lock()

    def _folder(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise S3Error("NoSuchUpload")
        return self.root / upload_id

    def create(self, bucket: str, key: str, initiator: str, content_type: str | None,
               metadata: dict, now: float) -> Upload:
        """
        Start an upload.  (Expired ones are removed by the expiry
        service's sweeps, not here.)
        """
        upload = Upload(secrets.token_hex(16), bucket, key, now, initiator, content_type,
                        dict(metadata))
        folder = self._folder(upload.upload_id)
        folder.mkdir(parents=True)
        temporary = folder / f".{_DESCRIPTION}"
        temporary.write_text(json.dumps(asdict(upload)))
        sync_file(temporary)
        temporary.rename(folder / _DESCRIPTION)
        sync_folder(folder)
        sync_folder(self.root)
        return upload

    def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        """
        @raise S3Error: C{NoSuchUpload}, also when the upload is for
            another bucket or key.
        """
        upload = self._read(self._folder(upload_id))
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise S3Error("NoSuchUpload", UploadId=upload_id[:100])
        return upload

    def _read(self, folder: Path) -> Upload | None:
        try:
            return Upload(**json.loads((folder / _DESCRIPTION).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def store_part(self, upload: Upload, number: int, body: BinaryIO) -> Part:
        """
        Put one part in place: read C{body} to its end (which verifies
        it) and then give the spooled request body a name in the
        upload's folder when the body holds the part as it is
        (L{CheckedReader.payload_file}), else copy it block by block.
        A body that raises (a bad signature or checksum found at its
        end) leaves nothing behind, and neither does an upload aborted
        meanwhile.

        @raise S3Error: what C{body} raised, or C{NoSuchUpload}.
        """
        folder = self._folder(upload.upload_id)
        if not folder.is_dir():
            raise S3Error("NoSuchUpload", UploadId=upload.upload_id)
        temporary = folder / f".part-{secrets.token_hex(8)}"
        source = payload_file(body)
        try:
            with BodyDigests(body, ("md5",)) as digests:
                if source is None:
                    self._copy(body, temporary, digests)
                else:
                    while block := body.read(BLOCK):
                        digests.update(block)
                etag = digests.finish()["md5"].hex()
            if source is not None:
                _link_or_copy(source, temporary)
            # An acknowledged part survives a power failure: its bytes,
            # then its name (the ETag the client was given is in it).
            sync_file(temporary)
            name = f"{number:05d}.{etag}"
            with self._install:
                temporary.rename(folder / name)
                for other in folder.glob(f"{number:05d}.*"):
                    if other.name != name:
                        other.unlink(missing_ok=True)
            sync_folder(folder)
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", UploadId=upload.upload_id) from None
        finally:
            temporary.unlink(missing_ok=True)
        stat = (folder / name).stat()
        return Part(number, etag, stat.st_size, stat.st_mtime)

    def _copy(self, body: BinaryIO, temporary: Path, digests: BodyDigests) -> None:
        with open(temporary, "xb") as handle:
            while block := body.read(BLOCK):
                digests.update(block)
                handle.write(block)

    def parts(self, upload: Upload) -> list[Part]:
        """
        The parts uploaded so far, by part number.
        """
        found = []
        with os.scandir(self._folder(upload.upload_id)) as entries:
            for entry in entries:
                match = _PART_FILE.fullmatch(entry.name)
                if match:
                    stat = entry.stat()
                    found.append(Part(int(match.group(1)), match.group(2), stat.st_size,
                                      stat.st_mtime))
        return sorted(found, key=lambda part: part.number)

    def open_parts(self, upload: Upload, parts: list[Part]) -> "PartsReader":
        folder = self._folder(upload.upload_id)
        return PartsReader([folder / f"{part.number:05d}.{part.etag}" for part in parts])

    def remove(self, upload_id: str) -> None:
        """
        Forget an upload and its parts (completed or aborted).
        """
        shutil.rmtree(self._folder(upload_id), ignore_errors=True)

    def uploads(self, bucket: str) -> list[Upload]:
        """
        The uploads in progress for C{bucket}, by key (UTF-8 byte
        order), then oldest first.
        """
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if _UPLOAD_ID.fullmatch(folder.name):
                upload = self._read(folder)
                if upload is not None and upload.bucket == bucket:
                    found.append(upload)
        return sorted(found, key=lambda u: (u.key, u.initiated, u.upload_id))

    def expire(self, before: float) -> int:
        """
        Remove every upload started before C{before}.

        @return: how many were removed.
        """
        if not self.root.is_dir():
            return 0
        removed = 0
        for folder in self.root.iterdir():
            if not _UPLOAD_ID.fullmatch(folder.name):
                continue
            upload = self._read(folder)
            started = upload.initiated if upload is not None else folder.stat().st_mtime
            if started < before:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


def payload_file(body: object) -> BinaryIO | None:
    """
    The file that holds exactly what C{body} reads, from its start, if
    C{body} says it has one (C{payload_file()}: a request body spooled to
    a file and sent as it is).
    """
    offer = getattr(body, "payload_file", None)
    return None if offer is None else offer()


def _link_or_copy(source: BinaryIO, target: Path) -> None:
    """
    Give the file C{source} a second name, C{target}, when it has a name
    (the site's spool files do, on the data volume, as the uploads are),
    or else copy it.

    @raise FileNotFoundError: C{target}'s folder is gone.
    """
    name = getattr(source, "name", None)
    if isinstance(name, str):
        try:
            os.link(name, target)
            return
        except FileNotFoundError:
            if not target.parent.is_dir():
                raise
        except OSError:
            pass
    source.seek(0)
    with open(target, "xb") as handle:
        shutil.copyfileobj(source, handle, BLOCK)


class PartsReader:
    """
    The parts of a completed upload read as one file, each part opened
    when reading reaches it.
    """

    def __init__(self, paths: list[Path]):
        self._paths = list(paths)
        self._current: BinaryIO | None = None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(BLOCK), b""))
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = open(self._paths.pop(0), "rb")
            data = self._current.read(size)
            if data:
                return data
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        self._paths = []
