"""
The S3 error codes clients act on, each with the HTTP status and default
message Amazon S3 gives it.

SDKs branch on the code (boto3 retries C{RequestTimeTooSkewed} after
correcting its clock, rclone treats C{NoSuchKey} as "absent"), so the
codes and statuses are those of Amazon S3, not our own.
"""

import itertools
import secrets
from collections.abc import Mapping
from xml.sax.saxutils import escape

# Request IDs: 16 upper-case hex digits as S3's, a random half drawn at
# start-up and a counter, so that each is unique without drawing
# random bytes on every request.
_REQUEST_ID_PREFIX = secrets.token_hex(4).upper()
_REQUEST_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """
    The C{x-amz-request-id} of a new S3 response (and C{RequestId} of its
    error body): unique among this process's requests.
    """
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_ID_COUNTER) & 0xFFFFFFFF:08X}"


# code -> (status, message S3 sends when there is nothing more specific)
CODES: Mapping[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket succeeded and you already own it."),
    "BadDigest": (400, "The Content-MD5 or checksum value that you specified did not match what the server received."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed object size."),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the Content-Length HTTP header."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS access key Id you provided does not exist in our records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "KeyTooLongError": (400, "Your key is too long."),
    "MalformedTrailerError": (400, "The request contained trailing data that was not well-formed."),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate against our published schema."),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchBucketPolicy": (404, "The bucket policy does not exist"),
    "NoSuchCORSConfiguration": (404, "The CORS configuration does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchLifecycleConfiguration": (404, "The lifecycle configuration does not exist"),
    "NoSuchPublicAccessBlockConfiguration": (404, "The public access block configuration was not found"),
    "NoSuchTagSet": (404, "The TagSet does not exist"),
    "NoSuchUpload": (404, "The specified multipart upload does not exist."),
    "NoSuchVersion": (404, "The specified version does not exist."),
    "NoSuchWebsiteConfiguration": (404, "The specified bucket does not have a website configuration"),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented."),
    "ObjectLockConfigurationNotFoundError": (404, "Object Lock configuration does not exist for this bucket"),
    "OwnershipControlsNotFoundError": (404, "The bucket ownership controls were not found"),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "ReplicationConfigurationNotFoundError": (404, "The replication configuration was not found"),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the current time is too large."),
    "ServerSideEncryptionConfigurationNotFoundError": (
        404, "The server side encryption configuration was not found"),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the signature you provided. Check your key and signing method."),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does not match what was computed."),
}


class S3Error(Exception):
    """
    A refusal in S3's terms.

    C{details} become extra elements of the error document, the way S3
    adds C{<StringToSign>} to C{SignatureDoesNotMatch} or
    C{<ServerTime>} to C{RequestTimeTooSkewed}; clients and people
    debugging a signer read them.

    @ivar headers: response headers that go with the error, such as
        C{x-amz-delete-marker} on the C{NoSuchKey} of a deleted key.
    """

    def __init__(self, code: str, message: str = "", **details: str):
        # A typo in a code would reach clients as a 500 they cannot act on.
        status, default_message = CODES[code]
        self.code = code
        self.status = status
        self.message = message or default_message
        self.details = details
        self.headers: dict[bytes, bytes] = {}
        super().__init__(f"{code}: {self.message}")

    def to_xml(self, request_id: str, resource: str = "") -> bytes:
        """
        The S3 error document for this error.
        """
        extra = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in self.details.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{escape(self.message)}</Message>{extra}"
            f"<Resource>{escape(resource)}</Resource><RequestId>{escape(request_id)}</RequestId></Error>"
        ).encode()
