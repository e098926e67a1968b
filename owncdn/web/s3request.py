"""
One authenticated S3 request, as every S3 action sees it: who signed
it, which bucket and key it names, its parameters and body, the access
checks, and how its answer or error goes out.

A bucket is a file service (storage, file system, caches, fetchers):
the key must be allowed to read it, or to write it for actions that
change it.  Storage services keep versions; the others do not, and so
have no C{x-amz-version-id}.
"""

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web import http
from twisted.web.http_headers import _nameEncoder

from owncdn.errors import InvalidPath, OwnCDNError
from owncdn.interfaces import FileInfo, IVersionedFiles, IWritableFiles
from owncdn.keys import LEVELS, access_level
from owncdn.paths import MAX_PATH_BYTES, normalize_path
from owncdn.s3 import chunked, xml
from owncdn.s3.checksums import CheckedReader
from owncdn.s3.errors import S3Error
from owncdn.s3.multipart import MultipartStore
from owncdn.s3.sigv4 import VerifiedRequest
from owncdn.web.site import PERCENT, closing_response, put_headers

# Service types that are web entry points, not buckets.
NOT_BUCKETS = ("api", "public")
# Where a multipart object keeps its S3 ETag (the MD5 of its parts'
# MD5s); every other object's ETag is the MD5 of its bytes.
S3_ETAG = "s3-etag"
# Bodies up to this size are in memory (the site spools larger ones):
# reading them needs no thread.
_BLOCK = 1024 * 1024

# OwnCDN's errors in S3's terms.
_S3_CODES = {
    "AccessDenied": "AccessDenied",
    "NoSuchService": "NoSuchBucket",
    "NoSuchFile": "NoSuchKey",
    "NoSuchVersion": "NoSuchVersion",
    "InvalidPath": "InvalidArgument",
    "InvalidParameter": "InvalidArgument",
    "MissingParameter": "InvalidArgument",
    "BadDigest": "BadDigest",
    "TooLarge": "EntityTooLarge",
    "ReadOnlyReplica": "AccessDenied",
    "NotSupported": "NotImplemented",
    "MethodNotAllowed": "MethodNotAllowed",
}


def s3_error(error: OwnCDNError) -> S3Error:
    """
    The S3 error for one of ours; anything unexpected is an
    C{InternalError} that tells nothing of the inside.
    """
    code = _S3_CODES.get(error.code)
    if code is None:
        return S3Error("InternalError")
    return S3Error(code, error.message)


def decode(raw: bytes, what: str) -> str:
    """
    A percent-encoded UTF-8 name from the request target.
    """
    try:
        return (unquote_to_bytes(raw) if PERCENT in raw else raw).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", f"The {what} is not valid UTF-8.") from None


def checked_key(key: str) -> str:
    """
    C{key} if it can be a path of our services, as it is.

    S3 keys are any UTF-8 up to 1024 bytes; ours are too, except that a
    path may not begin with C{/}, contain C{.} or C{..} segments, or
    control characters (L{normalize_path}), so such keys are refused
    rather than stored under another name.

    @raise S3Error: C{KeyTooLongError} or C{InvalidArgument}.
    """
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise S3Error("KeyTooLongError", MaxSizeAllowed=str(MAX_PATH_BYTES), Size=str(size))
    try:
        normalized = normalize_path(key)
    except InvalidPath as error:
        raise S3Error("InvalidArgument", f"This key is not supported: {error.message}.") from None
    if normalized != key:
        raise S3Error("InvalidArgument", "Keys that begin with / are not supported.")
    return key


def object_etag(info: FileInfo) -> str:
    """
    The S3 ETag of an object, unquoted: the MD5 of its bytes, or for a
    multipart object the ETag it was completed with.
    """
    return info.metadata.get(S3_ETAG) or info.etag


def parse_query(query: bytes) -> dict[str, str]:
    """
    The query parameters, each decoded once with C{+} kept as a plus
    (S3 signers send a space as C{%20}); the first of a repeated name.
    """
    params: dict[str, str] = {}
    for parameter in query.split(b"&"):
        if parameter:
            name, _, value = parameter.partition(b"=")
            params.setdefault(decode(name, "query"), decode(value, "query"))
    return params


@dataclass
class S3Call:
    """
    One S3 request whose signature has been verified.

    @ivar bucket: the bucket named by the path, or C{None} (the root).
    @ivar key: the object key named by the path, or C{None}.
    @ivar endpoint: the S3 resource (L{owncdn.web.s3.S3API}) answering it.
    """

    request: object
    request_id: str
    headers: dict[str, str]
    auth: VerifiedRequest
    access_key: object
    state: object
    uploads: MultipartStore
    query: dict[str, str]
    bucket: str | None
    key: str | None
    endpoint: Any = None

    @property
    def method(self) -> bytes:
        return self.request.method

    @property
    def resource(self) -> str:
        return decode(self.request.path, "path")

    @property
    def key_id(self) -> str:
        return self.access_key.id

    def service(self, level: str, bucket: str | None = None):
        """
        The file service of a bucket the key may C{level} (C{"read"} or
        C{"write"}); by default the request's bucket.

        @raise S3Error: C{NoSuchBucket}; C{AccessDenied} when the key
            may not, or for a write to a replica or to a service that
            stores nothing.
        """
        sid = self.bucket if bucket is None else bucket
        config = self.state.config.service(sid)
        if config is None or config.type in NOT_BUCKETS or sid not in self.state.registry:
            raise S3Error("NoSuchBucket", BucketName=sid)
        if LEVELS[access_level(self.access_key, sid)] < LEVELS[level]:
            raise S3Error("AccessDenied", f"The key {self.key_id} may not {level} bucket {sid}.")
        service = self.state.registry.get(sid)
        if level == "write":
            if config.options.get("replica"):
                raise S3Error("AccessDenied", f"Bucket {sid} is a read-only replica; "
                              "write to its primary.")
            if not IWritableFiles.providedBy(service):
                raise S3Error("AccessDenied", f"Bucket {sid} is a read-only {config.type} service.")
        return service

    def permission(self, bucket: str | None = None) -> str:
        """
        What the key may do to a bucket, as an ACL permission.
        """
        level = access_level(self.access_key, self.bucket if bucket is None else bucket)
        return "FULL_CONTROL" if level == "write" else "READ"

    def object_key(self) -> str:
        return checked_key(self.key)

    def versioned(self, service) -> bool:
        return IVersionedFiles.providedBy(service)

    def version_id(self, service, value: str | None) -> str | None:
        """
        A C{versionId} parameter for C{service}: C{None} for the current
        version (also C{"null"} on a service without versions).

        @raise S3Error: C{InvalidArgument} for a malformed one.
        """
        if value is None or (value == "null" and not self.versioned(service)):
            return None
        if not (self.versioned(service) and value.isascii() and value.isdigit()):
            raise S3Error("InvalidArgument", "Invalid version id specified",
                          ArgumentName="versionId", ArgumentValue=value[:100])
        return value

    def answer_when(self, d: Deferred, answer: Callable[[Any], object]) -> None:
        """
        Answer with C{answer(result)} once C{d} fires, or with the error
        it fails with, as though the action awaited it (see
        L{owncdn.web.handler.AsyncResource.answer_when}); the action
        returns at once.
        """
        self.endpoint.answer_when(self.request, d, answer)

    def payload(self) -> CheckedReader:
        """
        The request body as signed: decoded and verified as it is read.
        """
        self.request.content.seek(0)
        return chunked.open_payload(self.request.content, self.auth, self.headers)

    async def read_document(self, limit: int = xml.MAX_REQUEST_XML) -> bytes:
        """
        A small request body (an XML document), verified.

        @raise S3Error: C{MaxMessageLengthExceeded} past C{limit}, or
            what verifying the payload found.
        """
        reader = self.payload()
        if isinstance(self.request.content, BytesIO):
            return _read_capped(reader, limit)
        return await deferToThread(_read_capped, reader, limit)

    def send_xml(self, body: bytes, status: int = 200, headers: dict[bytes, bytes] | None = None) -> None:
        request = self.request
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", xml.CONTENT_TYPE)
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def send_empty(self, status: int = 200, headers: dict[bytes, bytes] | None = None) -> None:
        """
        Answer with no body and C{headers}, whose values this daemon made
        (see L{put_headers}).
        """
        request = self.request
        request.setResponseCode(status)
        if headers:
            put_headers(request, [(_nameEncoder.encode(name), value) for name, value in headers.items()])
        if status != 204:
            put_headers(request, ((b"Content-Length", b"0"),))
        request.finish_bodiless()


def send_s3_error(request, error: S3Error, request_id: str) -> None:
    """
    Answer with an S3 error document (no body for C{HEAD}), or cut the
    connection when part of a response is already out.
    """
    if request.finished or request._disconnected:
        return
    if request.startedWriting:
        request.channel.transport.abortConnection()
        return
    request.setResponseCode(error.status)
    for name, value in error.headers.items():
        request.setHeader(name, value)
    body = error.to_xml(request_id, decode_lenient(request.path))
    request.setHeader(b"content-type", xml.CONTENT_TYPE)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def s3_error_response(error: S3Error, request_id: str, resource: str) -> bytes:
    """
    A whole HTTP response with an S3 error document, for answering
    straight on the wire before the request reaches the resource tree;
    the connection closes after it.
    """
    body = error.to_xml(request_id, resource)
    status = b"%d %s" % (error.status, http.RESPONSES.get(error.status, b"Error"))
    return closing_response(status, xml.CONTENT_TYPE, body,
                            [(b"x-amz-request-id", request_id.encode()), *error.headers.items()])


def decode_lenient(path: bytes) -> str:
    return unquote_to_bytes(path).decode("utf-8", "replace")


def _read_capped(reader: CheckedReader, limit: int) -> bytes:
    pieces, total = [], 0
    while block := reader.read(_BLOCK):
        total += len(block)
        if total > limit:
            raise S3Error("MaxMessageLengthExceeded", MaxMessageLengthBytes=str(limit))
        pieces.append(block)
    return b"".join(pieces)
