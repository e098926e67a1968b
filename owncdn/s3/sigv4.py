"""
AWS Signature Version 4 in the C{Authorization} header, verified the
way Amazon S3 verifies it.

The web layer calls L{verify_request} once per S3 request with the raw
request target, the headers (see L{header_map}) and the server clock;
it gets back a L{VerifiedRequest} naming the key, or an L{S3Error}.  The
request body is checked afterwards, as it is read (L{owncdn.s3.chunked}).

S3's flavour of SigV4 differs from the generic one in two ways that
matter here: the path is not normalised (C{//}, C{.} and C{..} are signed
as sent) and is URI-encoded once, not twice.  Both are pinned by the
C{normalize: false} cases of the public AWS test suite in
C{tests/test_s3_sigv4.py}.  See C{docs/s3-auth.md} for the decisions.
"""

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

from owncdn.config import DEFAULT_S3_REGION
from owncdn.s3.errors import S3Error

try:
    # OpenSSL's HMAC object: copied in C (hmac.HMAC copies in Python).
    from _hashlib import hmac_new as _new_hmac
except ImportError:  # a Python built without OpenSSL
    _new_hmac = hmac.new

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"
# Amazon S3 refuses requests more than 15 minutes off its clock.
MAX_SKEW_SECONDS = 15 * 60
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_FORMS = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})

_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_DATE = re.compile(r"[0-9]{8}")
# Path bytes that canonicalise as themselves.
_PLAIN_PATH = re.compile(rb"[A-Za-z0-9._~/-]*")
# A query whose names and values canonicalise as themselves: unreserved
# characters only, and at most one "=" per parameter (a second one is
# part of the value, which canonicalises as %3D).
_PLAIN_QUERY = re.compile(rb"[A-Za-z0-9._~-]*(?:=[A-Za-z0-9._~-]*)?(?:&[A-Za-z0-9._~-]*(?:=[A-Za-z0-9._~-]*)?)*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# Clients separate the three components with ", " or "," (botocore) and
# AWS accepts either; some add spaces around "=" pieces too.
_COMPONENT_SEPARATOR = re.compile(r"[,\s]+")
_SPACES = re.compile(r"[ \t]+")
_NOT_SUPPORTED = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."


class Authorization(NamedTuple):
    """
    The parts of an C{Authorization: AWS4-HMAC-SHA256 ...} header.
    """

    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


class VerifiedRequest(NamedTuple):
    """
    What a good signature established, and what the body reader needs to
    verify the chunk and trailer signatures that chain from it.
    """

    access_key_id: str
    # The request time as signed (x-amz-date, basic ISO 8601).
    timestamp: str
    scope: str
    signing_key: bytes
    # The seed signature: the first link of an aws-chunked body's chain.
    signature: str
    # The x-amz-content-sha256 value: a hex digest or one of the forms above.
    content_sha256: str


def header_map(raw_headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> dict[str, str]:
    """
    The request headers as L{verify_request} wants them, from Twisted's
    C{request.requestHeaders.getAllRawHeaders()}.

    Names are lower-cased.  Values are decoded as ISO-8859-1 so that every
    byte the client signed comes back unchanged when the canonical request
    is encoded again; a repeated header becomes one value joined with
    C{","}, each part trimmed, as SigV4 canonicalises repeats.
    """
    headers = {}
    for name, values in raw_headers:
        lowered = _LOWERED.get(name)
        if lowered is None:
            lowered = name.decode("latin-1").lower()
            if len(_LOWERED) < _MAX_LOWERED:
                _LOWERED[name] = lowered
        headers[lowered] = (
            values[0].decode("latin-1").strip(" \t") if len(values) == 1
            else ",".join(value.decode("latin-1").strip(" \t") for value in values))
    return headers


# Header names as header_map gives them, by name as received: a few
# dozen in practice, bounded against a client that makes up names.
_LOWERED: dict[bytes, str] = {}
_MAX_LOWERED = 1000


def parse_authorization(value: str) -> Authorization:
    """
    Split an C{AWS4-HMAC-SHA256} C{Authorization} header into its parts.

    A client sends the same header but for the signature on every
    request of a day, so everything before the signature is parsed once
    (L{_parse_unsigned}) and only the signature is checked each time.

    @raise S3Error: C{InvalidRequest} for another scheme (SigV2, SigV4a),
        C{AuthorizationHeaderMalformed} for anything else that is wrong.
    """
    parsed, signature = _parse_signed(value)
    return parsed.auth._replace(signature=signature)


class _Parsed(NamedTuple):
    """
    An C{Authorization} header parsed, with what verifying its requests
    derives from it alone.
    """

    auth: Authorization
    scope: str
    # SignedHeaders as a set, and as the canonical request lists them.
    signed: frozenset[str]
    signed_list: str


def _parse_signed(value: str) -> tuple[_Parsed, str]:
    """
    The parsed C{Authorization} header C{value} (its signature left out
    of C{auth}) and its signature; all but the signature parsed once
    per client and day.

    @raise S3Error: as L{parse_authorization}.
    """
    head, separator, signature = value.rpartition("Signature=")
    if separator and _SIGNATURE.fullmatch(signature):
        return _parse_unsigned(head + _PLACEHOLDER), signature
    parsed = _parsed(_parse(value))
    return parsed, parsed.auth.signature


# A well-formed signature standing in for the real one in the cache key.
_PLACEHOLDER = "Signature=" + "0" * 64


@lru_cache(maxsize=256)
def _parse_unsigned(value: str) -> _Parsed:
    return _parsed(_parse(value))


def _parsed(auth: Authorization) -> _Parsed:
    return _Parsed(auth, auth.scope, frozenset(auth.signed_headers), ";".join(auth.signed_headers))


def _parse(value: str) -> Authorization:
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        raise S3Error("InvalidRequest", _NOT_SUPPORTED)
    components: dict[str, str] = {}
    for component in _COMPONENT_SEPARATOR.split(rest.strip()):
        name, equals, component_value = component.partition("=")
        if not equals or name in components:
            raise _malformed(f"the component {component!r} is not valid")
        components[name] = component_value
    missing = {"Credential", "SignedHeaders", "Signature"} - components.keys()
    if missing or len(components) != 3:
        raise _malformed("it must hold exactly Credential, SignedHeaders and Signature")
    credential = components["Credential"].rsplit("/", 4)
    if len(credential) != 5 or not all(credential):
        raise _malformed("the Credential must be <key id>/<date>/<region>/<service>/aws4_request")
    key_id, date, region, service, terminator = credential
    if not _DATE.fullmatch(date):
        raise _malformed(f"invalid credential date {date!r}")
    signed_headers = tuple(components["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in signed_headers):
        raise _malformed("SignedHeaders must be lower-case header names separated by ';'")
    signature = components["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise _malformed("the Signature must be 64 lower-case hex digits")
    return Authorization(key_id, date, region, service, terminator, signed_headers, signature)


def canonical_uri(path: bytes) -> str:
    """
    S3's canonical URI: the path as sent, percent-decoded once and encoded
    again byte by byte, keeping only unreserved characters and C{/}; no
    C{.}/C{..}/C{//} normalisation.
    """
    if _PLAIN_PATH.fullmatch(path):
        # The usual key: nothing to decode or encode.
        return path.decode("ascii") or "/"
    return quote(unquote_to_bytes(path), safe="/") or "/"


def canonical_query(query: bytes) -> str:
    """
    The canonical query string: each C{name=value} decoded and encoded
    again, sorted by name then value.  A bare C{uploads} is C{uploads=}.
    """
    if not query:
        return ""
    plain = _PLAIN_QUERY.fullmatch(query) is not None
    pairs = []
    for parameter in query.split(b"&"):
        if parameter:
            name, _, value = parameter.partition(b"=")
            if plain:
                pairs.append((name.decode("ascii"), value.decode("ascii")))
            else:
                pairs.append((quote(unquote_to_bytes(name), safe=""), quote(unquote_to_bytes(value), safe="")))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_header_value(value: str) -> str:
    """
    A header value trimmed, with runs of spaces inside it collapsed to one.
    """
    value = value.strip(" \t")
    return _SPACES.sub(" ", value) if "  " in value or "\t" in value else value


def canonical_request(method: str, path: bytes, query: bytes, headers: Mapping[str, str],
                      signed_headers: Sequence[str], payload_hash: str) -> str:
    """
    The SigV4 canonical request.  A signed header missing from C{headers}
    canonicalises as empty, which makes the signature fail rather than the
    server.
    """
    return _canonical_request(method, path, query, headers, signed_headers, ";".join(signed_headers),
                              payload_hash)


def _canonical_request(method: str, path: bytes, query: bytes, headers: Mapping[str, str],
                       signed_headers: Sequence[str], signed_list: str, payload_hash: str) -> str:
    lines = [method, canonical_uri(path), canonical_query(query) if query else ""]
    for name in signed_headers:
        value = headers.get(name, "")
        # canonical_header_value, called only for a value it changes.
        if value[:1] in _BLANKS or value[-1:] in _BLANKS or "  " in value or "\t" in value:
            value = canonical_header_value(value)
        lines.append(f"{name}:{value}")
    lines += ["", signed_list, payload_hash]
    return "\n".join(lines)


# The blanks canonical_header_value trims.
_BLANKS = frozenset({" ", "\t"})


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("latin-1")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


@lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """
    The derived key for one day, region and service.  Four HMACs per
    request would cost more than the rest of the check, and a key is used
    all day, so the derived keys are cached.
    """
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode(), "sha256")
    for part in (region, service, TERMINATOR):
        key = hmac.digest(key, part.encode("utf-8"), "sha256")
    return key


def sign(key: bytes, message: str) -> str:
    signer = _signer(key).copy()
    signer.update(message.encode("latin-1"))
    return signer.hexdigest()


@lru_cache(maxsize=1024)
def _signer(key: bytes):
    """
    An HMAC-SHA256 of C{key} over nothing yet, for L{sign} to copy: a
    copy skips the set-up of a new HMAC (OpenSSL's fetch of the digest,
    the key's pads), which costs more than signing a short message.
    """
    return _new_hmac(key, digestmod="sha256")


def request_time(headers: Mapping[str, str]) -> tuple[str, float]:
    """
    The signed request time from C{x-amz-date} (or else C{Date}): the
    basic ISO 8601 timestamp the string to sign uses, and POSIX seconds.

    @raise S3Error: C{AccessDenied}, as S3 answers a missing or bad date.
    """
    try:
        if "x-amz-date" in headers:
            value = headers["x-amz-date"]
            return value, _amz_seconds(value)
        else:
            moment = parsedate_to_datetime(headers["date"])
            # "-0000" (UTC, no zone information) parses as a naive datetime.
            moment = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (KeyError, TypeError, ValueError):
        raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header") from None
    return moment.strftime(_TIMESTAMP_FORMAT), moment.timestamp()


@lru_cache(maxsize=64)
def _amz_seconds(value: str) -> float:
    """
    The POSIX seconds of an C{x-amz-date}, parsed once for all the
    requests signed in the same second.

    @raise ValueError: it is not basic ISO 8601 in UTC.
    """
    if not _AMZ_DATE.fullmatch(value):
        raise ValueError(value)
    # By hand: strptime costs more than the rest of a GET's checks.
    return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                    int(value[11:13]), int(value[13:15]), tzinfo=timezone.utc).timestamp()


def verify_request(method: str, target: bytes, headers: Mapping[str, str],
                   lookup_secret: Callable[[str], str | None], now: float,
                   region: str = DEFAULT_S3_REGION) -> VerifiedRequest:
    """
    Check the SigV4 signature of an S3 request.

    @param method: the HTTP method, e.g. C{"PUT"}.
    @param target: the request target as sent (Twisted's C{request.uri}),
        path and query still percent-encoded.
    @param headers: lower-case name to value, see L{header_map}.
    @param lookup_secret: the secret of an access key ID, or C{None} when
        there is no such key.
    @param now: the server clock, POSIX seconds.
    @param region: the region this endpoint answers for (C{s3Region}):
        the scope must name it.
    @raise S3Error: C{AccessDenied} (anonymous, query-string signature,
        unsigned C{x-amz-*} header), C{InvalidRequest} (other scheme, no
        C{x-amz-content-sha256}), C{AuthorizationHeaderMalformed},
        C{RequestTimeTooSkewed}, C{InvalidAccessKeyId},
        C{InvalidArgument} (bad C{x-amz-content-sha256}) or
        C{SignatureDoesNotMatch}.
    """
    path, _, query = target.partition(b"?")
    if "authorization" not in headers:
        if b"X-Amz-Signature=" in query:
            raise S3Error("AccessDenied", "Query-string authentication is not supported; "
                          "sign the request in the Authorization header")
        raise S3Error("AccessDenied", "Anonymous access is not allowed")
    parsed, signature = _parse_signed(headers["authorization"])
    auth = parsed.auth
    timestamp, seconds = request_time(headers)
    if auth.date != timestamp[:8]:
        raise _malformed(f'Invalid credential date "{auth.date}". '
                         f'This date is not the same as X-Amz-Date: "{timestamp[:8]}".')
    if abs(now - seconds) > MAX_SKEW_SECONDS:
        raise S3Error("RequestTimeTooSkewed",
                      RequestTime=headers.get("x-amz-date") or headers.get("date", ""),
                      ServerTime=datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      MaxAllowedSkewMilliseconds=str(MAX_SKEW_SECONDS * 1000))
    if auth.region != region:
        raise wrong_region(auth.region, region)
    if auth.service != SERVICE:
        raise _malformed(f'incorrect service "{auth.service}". This endpoint belongs to "{SERVICE}".')
    if auth.terminator != TERMINATOR:
        raise _malformed(f'incorrect terminal "{auth.terminator}". This endpoint uses "{TERMINATOR}".')
    if "host" not in parsed.signed:
        raise _malformed("the host header must be signed")
    secret = lookup_secret(auth.access_key_id)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=auth.access_key_id)
    content_sha256 = _content_sha256(headers)
    unsigned = [name for name in headers.keys() - parsed.signed if name.startswith("x-amz-")]
    if unsigned:
        # As S3 does: an unsigned x-amz-* header (a copy source, an ACL)
        # could have been added by anyone on the way.
        raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                      HeadersNotSigned=", ".join(sorted(unsigned)))
    canonical = _canonical_request(method, path, query, headers, auth.signed_headers, parsed.signed_list,
                                   content_sha256)
    to_sign = string_to_sign(timestamp, parsed.scope, canonical)
    key = signing_key(secret, auth.date, auth.region, auth.service)
    if not hmac.compare_digest(sign(key, to_sign), signature):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=auth.access_key_id, StringToSign=to_sign,
                      SignatureProvided=signature, CanonicalRequest=canonical)
    return VerifiedRequest(auth.access_key_id, timestamp, parsed.scope, key, signature, content_sha256)


def _content_sha256(headers: Mapping[str, str]) -> str:
    value = headers.get("x-amz-content-sha256")
    if value is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if value == UNSIGNED_PAYLOAD or value in STREAMING_FORMS or _HEX_SHA256.fullmatch(value):
        return value
    raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                  "STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER], STREAMING-UNSIGNED-PAYLOAD-TRAILER "
                  "or a valid sha256 value.")


def wrong_region(signed: str, region: str) -> S3Error:
    """
    What S3 answers a request signed for another region: the error
    names the right one in C{<Region>} and in C{x-amz-bucket-region}
    (a C{HEAD} error has no body), from which botocore's redirector
    (boto3, the AWS CLI) re-signs the request for it and retries, once
    per bucket and client.
    """
    error = _malformed(f"the region '{signed}' is wrong; expecting '{region}'")
    error.details["Region"] = region
    error.headers[b"x-amz-bucket-region"] = region.encode()
    return error


def _malformed(reason: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed", f"The authorization header is malformed; {reason}")
