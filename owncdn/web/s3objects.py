"""
S3 object actions: PutObject, GetObject, HeadObject, CopyObject,
DeleteObject, GetObjectTagging, DeleteObjectTagging and GetObjectAcl.

An object is one file of a service; what S3 keeps with an object
(C{Content-Type}, the headers in L{STORED_HEADERS}, C{x-amz-meta-*})
is kept in the file's metadata and sent back with it.
"""

import tempfile
from dataclasses import replace
from functools import partial
from io import BytesIO
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.web.http_headers import Headers
from zope.interface import implementer

from owncdn.errors import NoSuchFile, NoSuchVersion
from owncdn.interfaces import FileInfo, IFileBody, IHeadable
from owncdn.s3 import chunked, xml
from owncdn.s3.errors import S3Error
from owncdn.storage import DeleteMarkerVersion
from owncdn.web.fileresponse import (
    Unsatisfiable, http_date, parse_http_date, parse_range, precondition_status, send_file,
)
from owncdn.web.s3request import S3_ETAG, S3Call, decode, object_etag

# Representation headers S3 keeps with an object and sends back.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding",
                  "content-language", "expires")
USER_METADATA = "x-amz-meta-"
# S3's limit on the x-amz-meta-* headers of one object.
MAX_USER_METADATA = 2048
# GetObject parameters that override response headers.
OVERRIDES = {
    "response-cache-control": b"cache-control",
    "response-content-disposition": b"content-disposition",
    "response-content-encoding": b"content-encoding",
    "response-content-language": b"content-language",
    "response-expires": b"expires",
}
# The request headers that can turn a GetObject into an error document.
_CONDITIONAL = (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"range")
# Sources of a copy up to this size are read into memory; larger ones
# are spooled into a file first.
COPY_IN_MEMORY = 1024 * 1024
BLOCK = 1024 * 1024


def object_metadata(call: S3Call) -> tuple[str | None, dict[str, str]]:
    """
    The content type and metadata a PutObject (or CreateMultipartUpload,
    or a copy that replaces metadata) asks to keep.

    @raise S3Error: C{MetadataTooLarge}; C{NotImplemented} for
        server-side encryption, which we do not do.
    """
    headers = call.headers
    user = {}
    user_size = 0
    for name, value in headers.items():
        if not name.startswith("x-amz-"):
            continue
        if name.startswith(USER_METADATA):
            user[name] = value
            user_size += len(name) - len(USER_METADATA) + len(value)
        elif name.startswith("x-amz-server-side-encryption"):
            raise S3Error("NotImplemented", "Server-side encryption is not supported.")
    if user_size > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", MaxSizeAllowed=str(MAX_USER_METADATA))
    metadata = {name: headers[name] for name in STORED_HEADERS if name in headers}
    if "content-encoding" in metadata:
        encoding = chunked.stored_content_encoding(metadata.pop("content-encoding"))
        if encoding is not None:
            metadata["content-encoding"] = encoding
    metadata.update(user)
    content_type = headers.get("content-type") or None
    return content_type, metadata


def version_headers(call: S3Call, service, info: FileInfo) -> dict[bytes, bytes]:
    if call.versioned(service) and info.version is not None:
        return {b"x-amz-version-id": info.version.encode()}
    return {}


async def put_object(call: S3Call) -> None:
    if "x-amz-copy-source" in call.headers:
        await copy_object(call)
        return
    service = call.service("write")
    key = call.object_key()
    content_type, metadata = object_metadata(call)
    stored = service.put(key, call.payload(), content_type=content_type, metadata=metadata)
    # The only wait is the last step: answered by a callback, which
    # costs a small PUT less than awaiting would.
    call.answer_when(stored, partial(_put_answer, call, service))


def _put_answer(call: S3Call, service, info: FileInfo) -> None:
    headers = version_headers(call, service, info)
    headers[b"etag"] = f'"{info.etag}"'.encode()
    call.send_empty(200, headers)


class ResponseHeaders(Headers):
    """
    Response headers that go out with C{x-amz-meta-*} names in lower
    case, as S3 sends them: SDKs take the metadata names from the wire
    as they are (boto3 would show C{Colour} for C{x-amz-meta-colour}),
    and Twisted otherwise sends every name capitalised.
    """

    def getAllRawHeaders(self):
        for name, values in super().getAllRawHeaders():
            yield (name.lower() if name.startswith(b"X-Amz-Meta-") else name), values


def use_metadata_headers(request) -> None:
    headers = ResponseHeaders()
    for name, values in request.responseHeaders.getAllRawHeaders():
        headers.setRawHeaders(name, values)
    request.responseHeaders = headers


@implementer(IFileBody)
class ObjectBody:
    """
    A file body as S3 presents it: with its S3 ETag and any
    C{response-content-type}, and never in another coding.
    """

    def __init__(self, body, info: FileInfo):
        self._body = body
        self.info = info

    def read(self, offset: int, length: int):
        return self._body.read(offset, length)

    def alternate(self, encoding: str):
        return None

    def close(self) -> None:
        self._body.close()


async def open_object(call: S3Call, service, key: str, version: str | None):
    """
    Open an object for reading, failing the way S3 does.

    @raise S3Error: C{NoSuchKey} (with C{x-amz-delete-marker} when the
        newest version is a delete marker), C{NoSuchVersion}, or
        C{MethodNotAllowed} for a version that is a delete marker.
    """
    # A HEAD asks a service that can describe a file without opening
    # it (a cache or an HTTP fetcher) with head: no download.
    head = call.request.method == b"HEAD" and IHeadable.providedBy(service)
    try:
        return await (service.head if head else service.get)(key, version)
    except DeleteMarkerVersion:
        error = S3Error("MethodNotAllowed", "The specified method is not allowed against a delete marker.")
        error.headers = {b"x-amz-delete-marker": b"true", b"x-amz-version-id": version.encode(),
                         b"allow": b"DELETE"}
        raise error from None
    except NoSuchVersion:
        raise S3Error("NoSuchVersion", Key=key, VersionId=version) from None
    except NoSuchFile:
        error = S3Error("NoSuchKey", Key=key)
        if call.versioned(service):
            try:
                newest = (await service.versions(key))[0]
            except NoSuchFile:
                newest = None
            if newest is not None and newest.deleted:
                error.headers = {b"x-amz-delete-marker": b"true",
                                 b"x-amz-version-id": newest.version.encode()}
        raise error from None


async def get_object(call: S3Call) -> None:
    """
    GetObject and HeadObject.
    """
    service = call.service("read")
    key = call.object_key()
    part = call.query.get("partNumber")
    if part is not None and part != "1":
        raise S3Error("NotImplemented", "Only partNumber=1 (the whole object) is supported.")
    version = call.version_id(service, call.query.get("versionId"))
    body = await open_object(call, service, key, version)
    info = body.info
    shown = info
    content_type = call.query.get("response-content-type")
    if S3_ETAG in info.metadata or content_type:
        shown = replace(info, etag=object_etag(info), content_type=content_type or info.content_type)
    headers = version_headers(call, service, info)
    for name, value in info.metadata.items():
        if name in STORED_HEADERS or name.startswith(USER_METADATA):
            headers[name.encode("latin-1")] = value.encode("latin-1")
    if any(name.startswith(USER_METADATA) for name in info.metadata):
        use_metadata_headers(call.request)
    for parameter, header in OVERRIDES.items():
        if parameter in call.query:
            headers[header] = call.query[parameter].encode("utf-8")
    try:
        _check_conditions(call, shown)
    except S3Error:
        body.close()
        raise
    await send_file(call.request, ObjectBody(body, shown), headers, allow_br=False)


def _check_conditions(call: S3Call, shown: FileInfo) -> None:
    """
    The two refusals S3 sends as error documents where plain HTTP sends
    an empty body: a failed C{If-Match}/C{If-Unmodified-Since}, and a
    range past the end.  (C{send_file} answers the 304s.)
    """
    request = call.request
    if not any(request.requestHeaders.hasHeader(name) for name in _CONDITIONAL):
        return
    status = precondition_status(request, shown)
    if status == 412:
        condition = "If-Match" if request.getHeader(b"if-match") is not None else "If-Unmodified-Since"
        error = S3Error("PreconditionFailed", Condition=condition)
        error.headers = {b"etag": f'"{shown.etag}"'.encode(), b"last-modified": http_date(shown.modified)}
        raise error
    if status == 304:
        return
    try:
        parse_range(request.getHeader(b"range"), shown.size)
    except Unsatisfiable:
        raise S3Error("InvalidRange", RangeRequested=request.getHeader(b"range").decode("latin-1"),
                      ActualObjectSize=str(shown.size)) from None


def _etag_listed(header: str, etag: str) -> bool:
    wanted = etag.strip('"')
    return any(candidate.strip() in ("*", wanted, f'"{wanted}"') for candidate in header.split(","))


def _copy_conditions(headers: dict[str, str], etag: str, modified: float) -> None:
    """
    The C{x-amz-copy-source-if-*} headers, as S3 combines them.

    @raise S3Error: C{PreconditionFailed}.
    """
    prefix = "x-amz-copy-source-"
    failed = None
    if (value := headers.get(prefix + "if-match")) is not None:
        if not _etag_listed(value, etag):
            failed = "x-amz-copy-source-If-Match"
    elif (since := parse_http_date(headers.get(prefix + "if-unmodified-since", "").encode("latin-1"))) \
            is not None and int(modified) > since:
        failed = "x-amz-copy-source-If-Unmodified-Since"
    if (value := headers.get(prefix + "if-none-match")) is not None:
        if _etag_listed(value, etag):
            failed = "x-amz-copy-source-If-None-Match"
    elif (since := parse_http_date(headers.get(prefix + "if-modified-since", "").encode("latin-1"))) \
            is not None and int(modified) <= since:
        failed = "x-amz-copy-source-If-Modified-Since"
    if failed is not None:
        raise S3Error("PreconditionFailed", Condition=failed)


def copy_source(value: str) -> tuple[str, str, str | None]:
    """
    The bucket, key and version of an C{x-amz-copy-source} header,
    C{[/]bucket/key[?versionId=v]} with the key URL-encoded.

    @raise S3Error: C{InvalidArgument}.
    """
    path, _, query = value.partition("?")
    bucket, slash, key = decode(path.encode("latin-1"), "copy source").lstrip("/").partition("/")
    if not bucket or not slash or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
    version = None
    if query:
        name, _, version = query.partition("=")
        if name != "versionId" or not version:
            raise S3Error("InvalidArgument", "Unsupported copy source parameter.",
                          ArgumentName="x-amz-copy-source")
    return bucket, key, version


async def copy_object(call: S3Call) -> None:
    """
    CopyObject: within a bucket or across buckets, of the current or a
    given version, keeping (C{COPY}) or replacing (C{REPLACE}) the
    metadata.  The copy is a new object with the MD5 ETag of its bytes.
    """
    source_bucket, source_key, source_version = copy_source(call.headers["x-amz-copy-source"])
    source = call.service("read", source_bucket)
    target = call.service("write")
    key = call.object_key()
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.",
                      ArgumentName="x-amz-metadata-directive")
    version = call.version_id(source, source_version)
    if directive == "COPY" and (source_bucket, source_key) == (call.bucket, key) and version is None:
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an "
                      "object to itself without changing the object's metadata, storage class, website "
                      "redirect location or encryption attributes.")
    body = await open_object(call, source, source_key, version)
    try:
        info = body.info
        _copy_conditions(call.headers, object_etag(info), info.modified)
        if directive == "COPY":
            content_type = info.content_type
            metadata = {name: value for name, value in info.metadata.items() if name != S3_ETAG}
        else:
            content_type, metadata = object_metadata(call)
        content = await _source_content(body, Path(call.state.data_dir))
    finally:
        body.close()
    try:
        stored = await target.put(key, content, content_type=content_type, metadata=metadata)
    finally:
        content.close()
    headers = version_headers(call, target, stored)
    if call.versioned(source) and info.version is not None:
        headers[b"x-amz-copy-source-version-id"] = info.version.encode()
    call.send_xml(xml.document("CopyObjectResult", xml.text("LastModified", xml.timestamp(stored.modified)),
                               xml.text("ETag", f'"{stored.etag}"')), headers=headers)


async def _source_content(body, spool_dir: Path):
    """
    The bytes of a copy's source as a file object for C{put}: in memory
    when small, else spooled into the data folder without ever holding
    more than one block.
    """
    size = body.info.size
    if size <= COPY_IN_MEMORY:
        return BytesIO(await _read(body, 0, size))
    spool = await deferToThread(tempfile.TemporaryFile, dir=spool_dir, prefix="copy-")
    try:
        position = 0
        while position < size:
            data = await _read(body, position, min(BLOCK, size - position))
            await deferToThread(spool.write, data)
            position += len(data)
        await deferToThread(spool.seek, 0)
    except BaseException:
        spool.close()
        raise
    return spool


async def _read(body, offset: int, length: int) -> bytes:
    pieces, position = [], offset
    while position < offset + length:
        data = await body.read(position, offset + length - position)
        if not data:
            raise IOError("the copy source ended before its size")
        pieces.append(data)
        position += len(data)
    return b"".join(pieces)


async def delete_object(call: S3Call) -> None:
    """
    DeleteObject: a delete marker on top (storage), the file itself
    (other services), or with C{versionId} that one version for good.
    Deleting what is not there succeeds, as on S3.
    """
    service = call.service("write")
    key = call.object_key()
    headers = await delete_one(call, service, key, call.query.get("versionId"))
    call.send_empty(204, headers)


async def delete_one(call: S3Call, service, key: str, version: str | None) -> dict[bytes, bytes]:
    """
    Delete one object or version; the response headers that tell what
    happened (C{x-amz-version-id}, C{x-amz-delete-marker}).
    """
    version = call.version_id(service, version)
    if version is not None:
        purged = await service.purge(key, version)
        headers = {b"x-amz-version-id": version.encode()}
        if purged is not None and purged.deleted:
            headers[b"x-amz-delete-marker"] = b"true"
        return headers
    try:
        marker = await service.delete(key)
    except NoSuchFile:
        return {}
    if not call.versioned(service):
        return {}
    return {b"x-amz-version-id": marker.version.encode(), b"x-amz-delete-marker": b"true"}


async def _existing(call: S3Call) -> FileInfo:
    service = call.service("read")
    key = call.object_key()
    body = await open_object(call, service, key, call.version_id(service, call.query.get("versionId")))
    body.close()
    return body.info


async def get_object_tagging(call: S3Call) -> None:
    """
    GetObjectTagging: objects carry no tags here, so always an empty set.
    """
    await _existing(call)
    call.send_xml(xml.document("Tagging", xml.node("TagSet")))


async def delete_object_tagging(call: S3Call) -> None:
    call.service("write")
    call.object_key()
    call.send_empty(204)


def access_policy(call: S3Call, permission: str) -> bytes:
    """
    The ACL of a bucket or object: the key owns it, with the access it
    has.
    """
    grantee = ('<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
               + xml.text("ID", call.key_id) + xml.text("DisplayName", call.key_id) + "</Grantee>")
    grant = xml.node("Grant", grantee, xml.text("Permission", permission))
    return xml.document("AccessControlPolicy", xml.owner(call.key_id), xml.node("AccessControlList", grant))


async def get_object_acl(call: S3Call) -> None:
    await _existing(call)
    call.send_xml(access_policy(call, call.permission()))
