"""
S3 mode, chosen by any C{x-amz-*} request header: the resource that
verifies each request's Signature Version 4, finds the action its
method, path and sub-resource name, and answers S3's way.

Path-style addressing only: C{/<bucket>/<key>}, the bucket being a
service ID.  The actions live by concept in C{s3buckets}, C{s3objects}
and C{s3multipart}; C{s3request} is what they share.  See docs/s3.md.
"""

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from owncdn.errors import OwnCDNError
from owncdn.keys import access_level
from owncdn.s3 import sigv4
from owncdn.s3.checksums import PayloadDigests, new_checksum
from owncdn.s3.errors import S3Error, new_request_id
from owncdn.s3.multipart import MultipartStore
from owncdn.web import s3buckets, s3multipart, s3objects
from owncdn.web.handler import AsyncResource
from owncdn.web.site import put_headers
from owncdn.web.s3request import (
    NOT_BUCKETS, S3Call, decode, decode_lenient, parse_query, s3_error, s3_error_response,
    send_s3_error,
)

# In the data folder: multipart uploads in progress.
UPLOADS_FOLDER = "s3-uploads"

Action = Callable[[S3Call], Awaitable[None]]

# The query parameters that name an S3 sub-resource (an action other
# than the plain one of the method); any not routed below is an action
# we do not offer.
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
    "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "location", "logging",
    "metadataTable", "metrics", "notification", "object-lock", "ownershipControls", "policy",
    "policyStatus", "publicAccessBlock", "renameObject", "replication", "requestPayment",
    "restore", "retention", "select", "tagging", "torrent", "uploadId", "uploads",
    "versioning", "versions", "website",
})

# (method, sub-resource or None) -> action, for the root, buckets, objects.
ROOT: dict[tuple[bytes, str | None], Action] = {
    (b"GET", None): s3buckets.list_buckets,
    (b"HEAD", None): s3buckets.list_buckets,
}
BUCKET: dict[tuple[bytes, str | None], Action] = {
    (b"GET", None): s3buckets.list_objects,
    (b"GET", "location"): s3buckets.get_bucket_location,
    (b"GET", "versioning"): s3buckets.get_bucket_versioning,
    (b"GET", "acl"): s3buckets.get_bucket_acl,
    (b"GET", "versions"): s3buckets.list_object_versions,
    (b"GET", "uploads"): s3multipart.list_multipart_uploads,
    (b"HEAD", None): s3buckets.head_bucket,
    (b"PUT", None): s3buckets.create_bucket,
    (b"DELETE", None): s3buckets.delete_bucket,
    (b"POST", "delete"): s3buckets.delete_objects,
    **{(b"GET", name): s3buckets.get_unset_setting(name)
       for name in (*s3buckets.UNSET_AS_ERROR, *s3buckets.UNSET_AS_DOCUMENT)},
}
OBJECT: dict[tuple[bytes, str | None], Action] = {
    (b"GET", None): s3objects.get_object,
    (b"HEAD", None): s3objects.get_object,
    (b"GET", "acl"): s3objects.get_object_acl,
    (b"GET", "tagging"): s3objects.get_object_tagging,
    (b"GET", "uploadId"): s3multipart.list_parts,
    (b"PUT", None): s3objects.put_object,
    (b"PUT", "uploadId"): s3multipart.upload_part,
    (b"POST", "uploads"): s3multipart.create_multipart_upload,
    (b"POST", "uploadId"): s3multipart.complete_multipart_upload,
    (b"DELETE", None): s3objects.delete_object,
    (b"DELETE", "tagging"): s3objects.delete_object_tagging,
    (b"DELETE", "uploadId"): s3multipart.abort_multipart_upload,
}


def route(method: bytes, bucket: str | None, key: str | None, query: dict[str, str]) -> Action:
    """
    The action for a request.

    @raise S3Error: C{NotImplemented} for a sub-resource we do not
        offer, C{MethodNotAllowed} for a method the resource does not take.
    """
    table = ROOT if bucket is None else BUCKET if key is None else OBJECT
    subresource = next((name for name in query if name in SUBRESOURCES), None) if query else None
    action = table.get((method, subresource))
    if action is not None:
        return action
    if subresource is not None:
        raise S3Error("NotImplemented", f"This S3 action ({method.decode('latin-1')[:10]} "
                      f"?{subresource}) is not offered by OwnCDN.")
    raise S3Error("MethodNotAllowed")


def split_path(path: bytes) -> tuple[str | None, str | None]:
    """
    The bucket and key of a path-style request path, C{None} where
    absent: C{/}, C{/bucket}, C{/bucket/}, C{/bucket/key}.
    """
    bucket, _, key = path.lstrip(b"/").partition(b"/")
    return (decode(bucket, "bucket name") or None), (decode(key, "key") or None)


class S3API(AsyncResource):
    """
    The S3-mode endpoint.
    """

    def __init__(self, state):
        super().__init__()
        self.state = state
        self.uploads = MultipartStore(Path(state.data_dir) / UPLOADS_FOLDER,
                                      state.config.s3_upload_expiry)

    def _lookup_secret(self, key_id: str) -> str | None:
        key = self.state.keys.by_id(key_id)
        return None if key is None else key.value

    async def handle(self, request) -> None:
        request.logged_service = "api"
        request_id = new_request_id()
        put_headers(request, ((b"X-Amz-Request-Id", request_id.encode()),))
        try:
            call = self._authenticate(request, request_id)
            action = route(request.method, call.bucket, call.key, call.query)
            await action(call)
        except S3Error as error:
            send_s3_error(request, error, request_id)

    def refuse_early(self, request, method: bytes, target: bytes) -> bytes | None:
        """
        The whole error response for a request whose signature fails, from
        its head alone (the canonical request needs no body), so that the
        site need not read a body that would be refused; C{None} when the
        head is good.  The site asks only for requests with a large body
        (L{owncdn.web.site.IEarlyRefusal}); once the body is in,
        L{handle} checks everything again.  Cheap: the signing key is cached.
        """
        headers = sigv4.header_map(request.requestHeaders.getAllRawHeaders())
        try:
            sigv4.verify_request(method.decode("latin-1"), target, headers, self._lookup_secret,
                                 self.state.clock.seconds(), self.state.config.s3_region)
        except S3Error as error:
            path = target.partition(b"?")[0]
            return s3_error_response(error, new_request_id(), decode_lenient(path))
        return None

    def stage_body(self, request, method: bytes, target: bytes, length: int):
        """
        For a PutObject with a plain (not C{aws-chunked}) body, signed by
        a key that may write the bucket, the bucket's staged body: the
        object is stored while it arrives (L{owncdn.storage.staging}),
        its digests computed on the way in.  Anything else, or any
        doubt, is spooled as usual (C{None}); L{handle} checks
        everything again once the body is in.
        """
        path, _, query = target.partition(b"?")
        if method != b"PUT" or query not in (b"", b"x-id=PutObject"):
            return None
        headers = sigv4.header_map(request.requestHeaders.getAllRawHeaders())
        if "x-amz-copy-source" in headers:
            return None
        try:
            auth = sigv4.verify_request("PUT", target, headers, self._lookup_secret,
                                        self.state.clock.seconds(), self.state.config.s3_region)
            bucket, key = split_path(path)
            form = auth.content_sha256
            if form in sigv4.STREAMING_FORMS or bucket is None or key is None:
                return None
            signed = None if form == sigv4.UNSIGNED_PAYLOAD else form
            algorithms = PayloadDigests.from_headers(headers, signed).algorithms()
        except S3Error:
            return None
        config = self.state.config.service(bucket)
        if (config is None or config.type in NOT_BUCKETS or config.options.get("replica")
                or bucket not in self.state.registry
                or access_level(self.state.keys.by_id(auth.access_key_id), bucket) != "write"):
            return None
        stage = getattr(self.state.registry.get(bucket), "stage_body", None)
        if stage is None:
            return None
        return stage(length, request.channel.transport,
                     {algorithm: partial(new_checksum, algorithm) for algorithm in algorithms})

    def _authenticate(self, request, request_id: str) -> S3Call:
        headers = sigv4.header_map(request.requestHeaders.getAllRawHeaders())
        auth = sigv4.verify_request(request.method.decode("latin-1"), request.uri, headers,
                                    self._lookup_secret, self.state.clock.seconds(),
                                    self.state.config.s3_region)
        key = self.state.keys.by_id(auth.access_key_id)
        _, _, query = request.uri.partition(b"?")
        bucket, object_key = split_path(request.path)
        return S3Call(request, request_id, headers, auth, key, self.state, self.uploads,
                      parse_query(query), bucket, object_key, self)

    def answer_error(self, request, error: Exception, failure=None) -> None:
        if isinstance(error, S3Error):
            send_s3_error(request, error, _request_id(request))
            return
        super().answer_error(request, error, failure)

    def send_error(self, request, error: OwnCDNError) -> None:
        send_s3_error(request, s3_error(error), _request_id(request))


def _request_id(request) -> str:
    # Set by S3API.handle before anything else.
    return request.responseHeaders.getRawHeaders(b"x-amz-request-id", [b""])[0].decode()
