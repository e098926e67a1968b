"""
S3 root and bucket actions: ListBuckets, HeadBucket, CreateBucket (only
to say the bucket exists), GetBucketLocation, GetBucketVersioning,
GetBucketAcl, the reads of the bucket settings we do not have (policy,
CORS, lifecycle, ...), ListObjects (v1 and v2), ListObjectVersions and
DeleteObjects.

Buckets are the configured file services; they are made and removed
with the C{owncdn} command, not through S3.
"""

from collections.abc import Awaitable, Callable
from dataclasses import replace

from owncdn.config import DEFAULT_S3_REGION
from owncdn.errors import OwnCDNError
from owncdn.interfaces import FileInfo
from owncdn.keys import LEVELS, access_level
from owncdn.s3 import listing, xml
from owncdn.s3.errors import S3Error
from owncdn.s3.listing import Rollup
from owncdn.web.s3objects import access_policy, delete_one
from owncdn.web.s3request import NOT_BUCKETS, S3Call, checked_key, object_etag, s3_error

# We do not know when a service was configured; S3 clients only show it.
CREATED = xml.timestamp(0)

# The bucket settings S3 has and OwnCDN does not.  Reading one answers
# what S3 answers for a bucket where it was never set, which is the
# truth here, and what clients that look expect (s3cmd info, minio's
# get_bucket_lifecycle/_tags/_encryption); setting one stays
# NotImplemented.  Sub-resource -> the S3 error code S3 answers ...
UNSET_AS_ERROR = {
    "policy": "NoSuchBucketPolicy",
    "cors": "NoSuchCORSConfiguration",
    "lifecycle": "NoSuchLifecycleConfiguration",
    "encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "tagging": "NoSuchTagSet",
    "website": "NoSuchWebsiteConfiguration",
    "replication": "ReplicationConfigurationNotFoundError",
    "object-lock": "ObjectLockConfigurationNotFoundError",
    "publicAccessBlock": "NoSuchPublicAccessBlockConfiguration",
    "ownershipControls": "OwnershipControlsNotFoundError",
}
# ... or the document it answers with (root element, content).
UNSET_AS_DOCUMENT = {
    "notification": ("NotificationConfiguration", ""),
    "logging": ("BucketLoggingStatus", ""),
    "accelerate": ("AccelerateConfiguration", ""),
    "requestPayment": ("RequestPaymentConfiguration", xml.text("Payer", "BucketOwner")),
}


async def list_buckets(call: S3Call) -> None:
    """
    ListBuckets: the file services the key may read.
    """
    state = call.state
    buckets = [
        xml.node("Bucket", xml.text("Name", service.id), xml.text("CreationDate", CREATED))
        for service in state.config.services
        if service.type not in NOT_BUCKETS and service.id in state.registry
        and LEVELS[access_level(call.access_key, service.id)] >= LEVELS["read"]
    ]
    call.send_xml(xml.document("ListAllMyBucketsResult", xml.owner(call.key_id),
                               xml.node("Buckets", *buckets)))


async def head_bucket(call: S3Call) -> None:
    call.service("read")
    call.send_empty(200, {b"x-amz-bucket-region": call.state.config.s3_region.encode()})


async def create_bucket(call: S3Call) -> None:
    """
    CreateBucket of a configured service is "you already own it", which
    clients that create buckets before writing (rclone) take as success.
    """
    try:
        call.service("write")
    except S3Error as error:
        if error.code == "NoSuchBucket":
            raise S3Error("AccessDenied", "Buckets are OwnCDN services: add them with the owncdn "
                          "command.") from None
        raise
    raise S3Error("BucketAlreadyOwnedByYou", BucketName=call.bucket)


async def delete_bucket(call: S3Call) -> None:
    call.service("write")
    raise S3Error("NotImplemented", "Buckets are OwnCDN services: remove them with the owncdn command.")


async def get_bucket_location(call: S3Call) -> None:
    call.service("read")
    region = call.state.config.s3_region
    # S3 answers an empty constraint for us-east-1, its oldest region.
    call.send_xml(xml.document("LocationConstraint", "" if region == DEFAULT_S3_REGION else region))


async def get_bucket_versioning(call: S3Call) -> None:
    service = call.service("read")
    status = xml.text("Status", "Enabled") if call.versioned(service) else ""
    call.send_xml(xml.document("VersioningConfiguration", status))


async def get_bucket_acl(call: S3Call) -> None:
    call.service("read")
    call.send_xml(access_policy(call, call.permission()))


def get_unset_setting(subresource: str) -> Callable[[S3Call], Awaitable[None]]:
    """
    The action that reads a bucket setting we do not have
    (L{UNSET_AS_ERROR}, L{UNSET_AS_DOCUMENT}).
    """
    async def get_setting(call: S3Call) -> None:
        call.service("read")
        if subresource in UNSET_AS_ERROR:
            raise S3Error(UNSET_AS_ERROR[subresource], BucketName=call.bucket)
        root, content = UNSET_AS_DOCUMENT[subresource]
        call.send_xml(xml.document(root, content))

    return get_setting


def _rollup(call: S3Call, limit_name: str = "max-keys") -> tuple[Rollup, object]:
    query = call.query
    rollup = Rollup(query.get("prefix", ""), query.get("delimiter"), listing.max_keys(query.get(limit_name)))
    return rollup, listing.encoder(query.get("encoding-type"))


async def _fill(rollup: Rollup, listing_call, after, resume) -> None:
    """
    Fill C{rollup} from a service listing (C{list} or C{list_versions})
    that starts after the cursor C{after}, jumping past each common
    prefix instead of reading its keys: C{resume} turns the cursor a
    batch ended at into the next one.
    """
    while not rollup.full:
        infos, following = await listing_call(rollup.prefix, after, rollup.max_keys + 1)
        for info in infos:
            if not rollup.add(info.path, info):
                return
        if following is None:
            return
        after = resume(following)


async def _list_keys(service, rollup: Rollup, after: str | None) -> None:
    await _fill(rollup, service.list, after, rollup.resume)


async def _list_versions(service, rollup: Rollup, after: tuple[str, str | None] | None) -> None:
    def resume(following: tuple[str, str]) -> tuple[str, str | None]:
        path = following[0]
        resumed = rollup.resume(path)
        return following if resumed == path else (resumed, None)

    await _fill(rollup, service.list_versions, after, resume)


def _contents(call: S3Call, rollup: Rollup, encode, owner: bool) -> list[str]:
    entries = []
    for key, info in rollup.contents:
        fields = [xml.text("Key", encode(key)), xml.text("LastModified", xml.timestamp(info.modified)),
                  xml.text("ETag", f'"{object_etag(info)}"'), xml.text("Size", info.size)]
        if owner:
            fields.append(xml.owner(call.key_id))
        fields.append(xml.text("StorageClass", "STANDARD"))
        entries.append(xml.node("Contents", *fields))
    return entries


def _prefixes(rollup: Rollup, encode) -> list[str]:
    return [xml.node("CommonPrefixes", xml.text("Prefix", encode(prefix))) for prefix in rollup.prefixes]


def _optional(name: str, value: str | None, encode=str) -> str:
    return "" if value is None else xml.text(name, encode(value))


async def list_objects(call: S3Call) -> None:
    """
    ListObjects (v1) and ListObjectsV2 (C{list-type=2}).
    """
    service = call.service("read")
    list_type = call.query.get("list-type", "1")
    if list_type not in ("1", "2"):
        raise S3Error("InvalidArgument", "list-type must be 1 or 2.", ArgumentName="list-type")
    rollup, encode = _rollup(call)
    if list_type == "2":
        await _list_v2(call, service, rollup, encode)
        return
    marker = call.query.get("marker")
    await _list_keys(service, rollup, rollup.start_after(marker))
    # S3 gives NextMarker only with a delimiter; otherwise clients go on
    # from the last key.
    next_marker = rollup.last if rollup.truncated and rollup.delimiter else None
    call.send_xml(xml.document(
        "ListBucketResult",
        xml.text("Name", call.bucket), xml.text("Prefix", encode(rollup.prefix)),
        xml.text("Marker", encode(marker or "")), _optional("NextMarker", next_marker, encode),
        xml.text("MaxKeys", rollup.max_keys), _optional("Delimiter", rollup.delimiter, encode),
        xml.text("IsTruncated", rollup.truncated),
        _optional("EncodingType", call.query.get("encoding-type")),
        _contents(call, rollup, encode, owner=True), _prefixes(rollup, encode),
    ))


async def _list_v2(call: S3Call, service, rollup: Rollup, encode) -> None:
    token = call.query.get("continuation-token")
    start_after = call.query.get("start-after")
    marker = listing.token_marker(token) if token is not None else start_after
    await _list_keys(service, rollup, rollup.start_after(marker))
    following = listing.continuation_token(rollup.last) if rollup.truncated else None
    call.send_xml(xml.document(
        "ListBucketResult",
        xml.text("Name", call.bucket), xml.text("Prefix", encode(rollup.prefix)),
        _optional("ContinuationToken", token), _optional("NextContinuationToken", following),
        xml.text("KeyCount", rollup.key_count), xml.text("MaxKeys", rollup.max_keys),
        _optional("Delimiter", rollup.delimiter, encode), xml.text("IsTruncated", rollup.truncated),
        _optional("StartAfter", start_after, encode),
        _optional("EncodingType", call.query.get("encoding-type")),
        _contents(call, rollup, encode, owner=call.query.get("fetch-owner") == "true"),
        _prefixes(rollup, encode),
    ))


async def list_object_versions(call: S3Call) -> None:
    """
    ListObjectVersions: every kept version and delete marker of a
    storage service; the current files, each as version C{null}, of
    other services.
    """
    service = call.service("read")
    rollup, encode = _rollup(call)
    key_marker = call.query.get("key-marker")
    version_marker = call.query.get("version-id-marker")
    if version_marker is not None and key_marker is None:
        raise S3Error("InvalidArgument", "A version-id marker cannot be specified without a key marker.",
                      ArgumentName="version-id-marker")
    if not call.versioned(service):
        await _list_keys(service, rollup, rollup.start_after(key_marker))
    else:
        if version_marker == "null":
            version_marker = None
        call.version_id(service, version_marker)
        start = rollup.start_after(key_marker)
        after = None if start is None else (start, version_marker if start == key_marker else None)
        await _list_versions(service, rollup, after)
    versioned = call.versioned(service)
    entries = [_version_entry(call, key, info if versioned else replace(info, version=None), encode)
               for key, info in rollup.contents]
    next_markers = ""
    if rollup.truncated:
        last = rollup.last_item
        next_markers = xml.text("NextKeyMarker", encode(rollup.last))
        if last is not None:
            next_markers += xml.text("NextVersionIdMarker", last.version if versioned else "null")
    call.send_xml(xml.document(
        "ListVersionsResult",
        xml.text("Name", call.bucket), xml.text("Prefix", encode(rollup.prefix)),
        xml.text("KeyMarker", encode(key_marker or "")), xml.text("VersionIdMarker", version_marker or ""),
        next_markers, xml.text("MaxKeys", rollup.max_keys),
        _optional("Delimiter", rollup.delimiter, encode), xml.text("IsTruncated", rollup.truncated),
        _optional("EncodingType", call.query.get("encoding-type")),
        entries, _prefixes(rollup, encode),
    ))


def _version_entry(call: S3Call, key: str, info: FileInfo, encode) -> str:
    common = [xml.text("Key", encode(key)), xml.text("VersionId", info.version or "null"),
              xml.text("IsLatest", info.current), xml.text("LastModified", xml.timestamp(info.modified))]
    if info.deleted:
        return xml.node("DeleteMarker", *common, xml.owner(call.key_id))
    return xml.node("Version", *common, xml.text("ETag", f'"{object_etag(info)}"'),
                    xml.text("Size", info.size), xml.text("StorageClass", "STANDARD"),
                    xml.owner(call.key_id))


async def delete_objects(call: S3Call) -> None:
    """
    DeleteObjects: up to 1000 keys or versions, each deleted as
    DeleteObject would, each with its own result.
    """
    service = call.service("write")
    document = xml.parse_delete(await call.read_document())
    results = []
    for key, version in document.objects:
        try:
            headers = await delete_one(call, service, checked_key(key), version)
        except (S3Error, OwnCDNError) as failure:
            error = failure if isinstance(failure, S3Error) else s3_error(failure)
            results.append(xml.node("Error", xml.text("Key", key), _optional("VersionId", version),
                                    xml.text("Code", error.code), xml.text("Message", error.message)))
            continue
        if document.quiet:
            continue
        fields = [xml.text("Key", key), _optional("VersionId", version)]
        if headers.get(b"x-amz-delete-marker"):
            fields.append(xml.text("DeleteMarker", True))
            if version is None:
                fields.append(xml.text("DeleteMarkerVersionId", headers[b"x-amz-version-id"].decode()))
        results.append(xml.node("Deleted", *fields))
    call.send_xml(xml.document("DeleteResult", results))
