"""
S3 multipart uploads: CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload, ListParts and
ListMultipartUploads.

Parts live in the data folder (L{owncdn.s3.multipart}) until the upload
completes; then they are read back as one file by the service's
C{put}, in its own thread, so the object is one version and one change
like any other put, and replicas copy it as such.  File work runs in the
reactor's thread pool, never on the reactor thread.
"""

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from owncdn.errors import OwnCDNError
from owncdn.s3 import listing, xml
from owncdn.s3.errors import S3Error
from owncdn.s3.listing import Rollup
from owncdn.s3.multipart import MIN_PART_SIZE, SWEEP_INTERVAL, MultipartStore, Part, Upload, multipart_etag
from owncdn.web.s3objects import object_metadata, version_headers
from owncdn.web.s3request import S3_ETAG, S3Call, s3_error

log = Logger()

MAX_PARTS = 1000
# A CompleteMultipartUpload still storing after this many seconds
# answers 200 and keeps the connection alive with a space this often.
KEEPALIVE_AFTER = 10.0
KEEPALIVE_EVERY = 10.0


class UploadExpiry(TimerService):
    """
    Removes the uploads neither completed nor aborted for the store's
    expiry (C{s3UploadExpiry}): at start, then every C{interval}
    seconds, the file work in a thread.  A failed sweep is logged and
    the next one tries again.

    @param in_thread: runs a blocking call, returning a Deferred
        (C{deferToThread}; tests pass one that runs it at once).
    """

    def __init__(self, store: MultipartStore, clock, interval: float = SWEEP_INTERVAL,
                 in_thread: Callable[..., Deferred] = deferToThread):
        super().__init__(interval, self.sweep)
        self.clock = clock
        self._store = store
        self._in_thread = in_thread

    def sweep(self) -> Deferred:
        d = self._in_thread(self._store.expire, self.clock.seconds() - self._store.expiry)
        d.addCallback(lambda removed: removed and log.info(
            "removed {count} expired multipart uploads", count=removed))
        d.addErrback(lambda failure: log.failure("sweeping expired multipart uploads failed", failure))
        return d


def _upload_id(call: S3Call) -> str:
    return call.query.get("uploadId", "")


async def _upload(call: S3Call, level: str) -> tuple[object, Upload]:
    service = call.service(level)
    key = call.object_key()
    upload = await deferToThread(call.uploads.get, _upload_id(call), call.bucket, key)
    return service, upload


async def create_multipart_upload(call: S3Call) -> None:
    call.service("write")
    key = call.object_key()
    content_type, metadata = object_metadata(call)
    upload = await deferToThread(call.uploads.create, call.bucket, key, call.key_id, content_type,
                                 metadata, call.state.clock.seconds())
    call.send_xml(xml.document("InitiateMultipartUploadResult", xml.text("Bucket", call.bucket),
                               xml.text("Key", key), xml.text("UploadId", upload.upload_id)))


async def upload_part(call: S3Call) -> None:
    if "x-amz-copy-source" in call.headers:
        raise S3Error("NotImplemented", "UploadPartCopy is not supported; use CopyObject.")
    number = call.query.get("partNumber", "")
    if not (number.isascii() and number.isdigit() and 1 <= int(number) <= xml.MAX_PART_NUMBER):
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=number[:100])
    _, upload = await _upload(call, "write")
    part = await deferToThread(call.uploads.store_part, upload, int(number), call.payload())
    call.send_empty(200, {b"etag": f'"{part.etag}"'.encode()})


def _chosen_parts(asked: list[tuple[int, str]], stored: list[Part]) -> list[Part]:
    """
    The stored parts a CompleteMultipartUpload names, checked as S3
    checks them.

    @raise S3Error: C{InvalidPartOrder}, C{InvalidPart} or
        C{EntityTooSmall}.
    """
    by_number = {part.number: part for part in stored}
    chosen: list[Part] = []
    for number, etag in asked:
        if chosen and number <= chosen[-1].number:
            raise S3Error("InvalidPartOrder")
        part = by_number.get(number)
        if part is None or part.etag != etag:
            raise S3Error("InvalidPart", PartNumber=str(number), ETag=etag[:100])
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART_SIZE:
            raise S3Error("EntityTooSmall", ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART_SIZE),
                          PartNumber=str(part.number), ETag=part.etag)
    return chosen


class KeepAlive:
    """
    What S3 does while a long CompleteMultipartUpload stores the object:
    after C{KEEPALIVE_AFTER} seconds it sends C{200 OK} and the XML
    declaration, then a space every C{KEEPALIVE_EVERY} seconds, so that
    clients' read timeouts (boto3: 60 s) do not fire on a 5 GB object;
    the result or the error document follows.  SDKs look for an
    C{<Error>} in the body of a 200 for exactly this action.
    """

    def __init__(self, call: S3Call):
        self._call = call
        self.started = False
        self._timer = call.state.clock.callLater(KEEPALIVE_AFTER, self._start)
        self._loop: LoopingCall | None = None

    def _start(self) -> None:
        self.started = True
        request = self._call.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", xml.CONTENT_TYPE)
        request.write(xml.DECLARATION.encode())
        self._loop = LoopingCall(request.write, b" ")
        self._loop.clock = self._call.state.clock
        self._loop.start(KEEPALIVE_EVERY, now=False)

    def stop(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def finish(self, document: bytes) -> None:
        """
        Send the rest of the answer after the declaration already sent.
        """
        request = self._call.request
        request.write(document.removeprefix(xml.DECLARATION.encode()))
        request.finish()


async def complete_multipart_upload(call: S3Call) -> None:
    service, upload = await _upload(call, "write")
    asked = xml.parse_complete(await call.read_document())
    stored = await deferToThread(call.uploads.parts, upload)
    chosen = _chosen_parts(asked, stored)
    etag = multipart_etag(chosen)
    reader = call.uploads.open_parts(upload, chosen)
    keepalive = KeepAlive(call)
    try:
        info = await service.put(upload.key, reader, content_type=upload.content_type,
                                 metadata={**upload.metadata, S3_ETAG: etag})
    except (S3Error, OwnCDNError) as failure:
        if not keepalive.started:
            raise
        error = failure if isinstance(failure, S3Error) else s3_error(failure)
        keepalive.finish(error.to_xml(call.request_id, call.resource))
        return
    finally:
        keepalive.stop()
        reader.close()
    await deferToThread(call.uploads.remove, upload.upload_id)
    document = xml.document(
        "CompleteMultipartUploadResult", xml.text("Location", f"/{call.bucket}/{upload.key}"),
        xml.text("Bucket", call.bucket), xml.text("Key", upload.key), xml.text("ETag", f'"{etag}"'))
    if keepalive.started:
        keepalive.finish(document)
    else:
        call.send_xml(document, headers=version_headers(call, service, info))


async def abort_multipart_upload(call: S3Call) -> None:
    _, upload = await _upload(call, "write")
    await deferToThread(call.uploads.remove, upload.upload_id)
    call.send_empty(204)


def _whole_number(call: S3Call, name: str, default: int, high: int) -> int:
    value = call.query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        raise S3Error("InvalidArgument", f"{name} must be a whole number.", ArgumentName=name,
                      ArgumentValue=value[:100])
    return min(int(value), high)


def _initiator(call: S3Call, upload: Upload) -> str:
    return (xml.node("Initiator", xml.text("ID", upload.initiator), xml.text("DisplayName", upload.initiator))
            + xml.owner(upload.initiator))


async def list_parts(call: S3Call) -> None:
    _, upload = await _upload(call, "read")
    limit = _whole_number(call, "max-parts", MAX_PARTS, MAX_PARTS)
    marker = _whole_number(call, "part-number-marker", 0, xml.MAX_PART_NUMBER)
    parts = [part for part in await deferToThread(call.uploads.parts, upload) if part.number > marker]
    shown, truncated = parts[:limit], len(parts) > limit
    entries = [xml.node("Part", xml.text("PartNumber", part.number),
                        xml.text("LastModified", xml.timestamp(part.modified)),
                        xml.text("ETag", f'"{part.etag}"'), xml.text("Size", part.size))
               for part in shown]
    next_marker = shown[-1].number if shown else marker
    call.send_xml(xml.document(
        "ListPartsResult", xml.text("Bucket", call.bucket), xml.text("Key", upload.key),
        xml.text("UploadId", upload.upload_id), _initiator(call, upload),
        xml.text("StorageClass", "STANDARD"), xml.text("PartNumberMarker", marker),
        xml.text("NextPartNumberMarker", next_marker), xml.text("MaxParts", limit),
        xml.text("IsTruncated", truncated), entries,
    ))


async def list_multipart_uploads(call: S3Call) -> None:
    """
    ListMultipartUploads, with S3's prefix, delimiter, markers and
    C{max-uploads}.
    """
    call.service("read")
    query = call.query
    rollup = Rollup(query.get("prefix", ""), query.get("delimiter"),
                    _whole_number(call, "max-uploads", MAX_PARTS, MAX_PARTS))
    encode = listing.encoder(query.get("encoding-type"))
    key_marker, id_marker = query.get("key-marker"), query.get("upload-id-marker")
    uploads = await deferToThread(call.uploads.uploads, call.bucket)
    for upload in _after(uploads, rollup.start_after(key_marker), key_marker, id_marker):
        if upload.key.startswith(rollup.prefix) and not rollup.add(upload.key, upload):
            break
    entries = [xml.node("Upload", xml.text("Key", encode(upload.key)), xml.text("UploadId", upload.upload_id),
                        _initiator(call, upload), xml.text("StorageClass", "STANDARD"),
                        xml.text("Initiated", xml.timestamp(upload.initiated)))
               for _, upload in rollup.contents]
    following = ""
    if rollup.truncated:
        following = xml.text("NextKeyMarker", encode(rollup.last))
        if rollup.last_item is not None:
            following += xml.text("NextUploadIdMarker", rollup.last_item.upload_id)
    call.send_xml(xml.document(
        "ListMultipartUploadsResult", xml.text("Bucket", call.bucket),
        xml.text("KeyMarker", encode(key_marker or "")), xml.text("UploadIdMarker", id_marker or ""),
        following, xml.text("MaxUploads", rollup.max_keys), xml.text("IsTruncated", rollup.truncated),
        xml.text("Prefix", encode(rollup.prefix)),
        "" if rollup.delimiter is None else xml.text("Delimiter", encode(rollup.delimiter)),
        "" if "encoding-type" not in query else xml.text("EncodingType", query["encoding-type"]),
        entries, [xml.node("CommonPrefixes", xml.text("Prefix", encode(p))) for p in rollup.prefixes],
    ))


def _after(uploads: list[Upload], start: str | None, key_marker: str | None,
           id_marker: str | None):
    """
    The uploads after the markers: those of keys after C{start}, and
    with C{upload-id-marker} the uploads of the marker key that come
    after that one.
    """
    passed = False
    for upload in uploads:
        if start is None or upload.key > start:
            yield upload
        elif id_marker and upload.key == key_marker:
            if passed:
                yield upload
            passed = passed or upload.upload_id == id_marker
