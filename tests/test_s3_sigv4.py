"""
Tests for L{owncdn.s3.sigv4}: canonicalisation and signing against the
public AWS Signature Version 4 test suite, the S3 chunked-upload example
of the AWS documentation, and requests signed by botocore; then each
refusal of L{verify_request}.

The suite cases are those of awslabs/aws-c-auth
C{tests/aws-signing-test-suite/v4} that hold under S3's rules
(C{"normalize": false}: no path normalisation, single URI encoding).
Their credentials, region, service and time are those of the suite's
C{context.json}.
"""

import hashlib
from calendar import timegm
from collections.abc import Callable
from time import strptime
from urllib.parse import urlsplit

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from twisted.trial.unittest import SynchronousTestCase

from owncdn.s3 import sigv4
from owncdn.s3.errors import S3Error

SUITE_KEY_ID = "AKIDEXAMPLE"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TIME = "20150830T123600Z"
SUITE_SCOPE = "20150830/us-east-1/service/aws4_request"

# header-signed-request.txt of each case: the request as the suite's
# signer sent it, its Authorization header carrying the expected signature.
SUITE_SIGNED_REQUESTS = {
    "get-header-key-duplicate": (
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;my-header1;x-amz-date, "
        "Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-header-value-order": (
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value4\nMy-Header1:value1\nMy-Header1:value3\n"
        "My-Header1:value2\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;my-header1;x-amz-date, "
        "Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-header-value-trim": (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: "a   b   c"\n'
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;my-header1;my-header2;x-amz-date, "
        "Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-relative-relative-unnormalized": (
        "GET /example1/example2/../.. HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=dc33e0856fd4baca4d7aa2146c38958283844764f38c74252a333df5e613003b\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-slash-dot-slash-unnormalized": (
        "GET /./ HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=68714168e6557f8f2de0ef956fc24dc2593a4bd2961f8df51898d8a134695145\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-slash-pointless-dot-unnormalized": (
        "GET /./example HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=beb03f223f7deae4146464f06e29eebbee9c8afbe15c290cf07aa8b119e14cff\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-slashes-unnormalized": (
        "GET //example// HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-space-unnormalized": (
        "GET /example space/ HTTP/1.1\nHost:example.amazonaws.com\n"
        "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-unreserved": (
        "GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\n"
        "Host:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-utf8": (
        "GET /\u1234 HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-vanilla-empty-query-key": (
        "GET /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-vanilla-query-order-encoded": (
        "GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-vanilla-query-order-key-case": (
        "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-vanilla-query-unreserved": (
        "GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
        "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\n"
        "Host:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "get-vanilla-utf8-query": (
        "GET /?\u1234=bar HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "post-header-key-sort": (
        "POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value1\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;my-header1;x-amz-date, "
        "Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "post-header-value-case": (
        "POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:VALUE1\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;my-header1;x-amz-date, "
        "Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "post-vanilla": (
        "POST / HTTP/1.1\nHost:example.amazonaws.com\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b\n"
        "X-Amz-Date:20150830T123600Z\n\n"),
    "post-x-www-form-urlencoded": (
        "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\n"
        "Content-Length:13\n"
        "x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e\n"
        "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, "
        "Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b\n"
        "X-Amz-Date:20150830T123600Z\n\nParam1=value1"),
}

# The query-signing variants of some cases: the request target as a
# presigning client sends it (query parameters in its own order and
# encoding), and the suite's query-canonical-request.txt and
# query-string-to-sign.txt.
_PRESIGN = ("X-Amz-SignedHeaders={signed}&X-Amz-Date=20150830T123600Z"
            "&X-Amz-Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request&X-Amz-Algorithm=AWS4-HMAC-SHA256")
_CANONICAL_QUERY = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2F"
                    "service%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=")
_HOST = "host:example.amazonaws.com\n"
SUITE_CANONICAL_REQUESTS = {
    "get-slashes-unnormalized": (
        "//example//?" + _PRESIGN.format(signed="host"), {},
        f"GET\n//example//\n{_CANONICAL_QUERY}host\n{_HOST}\nhost\n{sigv4.EMPTY_SHA256}",
        "14168dc49bb367458c443a48b02631d9ba1fab52ba52fb1ef385ab0eb4658964"),
    "get-relative-relative-unnormalized": (
        "/example1/example2/../..?" + _PRESIGN.format(signed="host"), {},
        f"GET\n/example1/example2/../..\n{_CANONICAL_QUERY}host\n{_HOST}\nhost\n{sigv4.EMPTY_SHA256}",
        "1ec1ee4085413c04341ba31241e1f1bf129df2450388f9e43c22e557f8e827bd"),
    "get-utf8": (
        "/\u1234?" + _PRESIGN.format(signed="host"), {},
        f"GET\n/%E1%88%B4\n{_CANONICAL_QUERY}host\n{_HOST}\nhost\n{sigv4.EMPTY_SHA256}",
        "4148d48eedde44fc6b52c92dcab505640ab9350b6ac42891703d9e3575b770ab"),
    "get-vanilla-empty-query-key": (
        "/?" + _PRESIGN.format(signed="host") + "&Param1=value1", {},
        f"GET\n/\nParam1=value1&{_CANONICAL_QUERY}host\n{_HOST}\nhost\n{sigv4.EMPTY_SHA256}",
        "217c5ce518f8cd47e998f859ee357ad85e7c5b8db50b3b62ab80402f61166956"),
    "get-vanilla-query-order-key-case": (
        "/?Param2=value2&" + _PRESIGN.format(signed="host") + "&Param1=value1", {},
        f"GET\n/\nParam1=value1&Param2=value2&{_CANONICAL_QUERY}host\n{_HOST}\nhost\n{sigv4.EMPTY_SHA256}",
        "eb1512f5ed1470925b7b1072c2108953680032d6bc3ccbef8eb7c6fdf1639827"),
    "get-vanilla-query-unreserved": (
        "/?" + _PRESIGN.format(signed="host") + "&-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        "=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", {},
        "GET\n/\n-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
        f"-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz&{_CANONICAL_QUERY}host\n{_HOST}\n"
        f"host\n{sigv4.EMPTY_SHA256}",
        "8f98081ae4d79cd54ca4a1d36e2356f7cb99fdf91dfe307d8f72faf0b9554928"),
    "get-header-value-trim": (
        "/?" + _PRESIGN.format(signed="host;my-header1;my-header2"),
        {"my-header1": " value1", "my-header2": ' "a   b   c"'},
        f"GET\n/\n{_CANONICAL_QUERY}host%3Bmy-header1%3Bmy-header2\n{_HOST}my-header1:value1\n"
        f'my-header2:"a b c"\n\nhost;my-header1;my-header2\n{sigv4.EMPTY_SHA256}',
        "79b6cafb02b93e8b4cfc53cbf6dcf562477c321fe4af691f077f9213ad23876e"),
    "get-header-key-duplicate": (
        "/?" + _PRESIGN.format(signed="host%3Bmy-header1"), {"my-header1": "value2,value2,value1"},
        f"GET\n/\n{_CANONICAL_QUERY}host%3Bmy-header1\n{_HOST}my-header1:value2,value2,value1\n\n"
        f"host;my-header1\n{sigv4.EMPTY_SHA256}",
        "f886b1c161d47c16ca226b43daafb78d40e6d6a3c10a8fd89695498e2724ef70"),
}

# The PUT of the S3 documentation's chunked-upload example
# ("Signature Calculations for the Authorization Header: Transferring
# Payload in Multiple Chunks"): its seed request.
EXAMPLE_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_NOW = timegm(strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
EXAMPLE_SEED_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                     "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                     "x-amz-decoded-content-length;x-amz-storage-class,"
                     "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
}
EXAMPLE_SEED_CANONICAL = (
    "PUT\n/examplebucket/chunkObject.txt\n\ncontent-encoding:aws-chunked\ncontent-length:66824\n"
    "host:s3.amazonaws.com\nx-amz-content-sha256:STREAMING-AWS4-HMAC-SHA256-PAYLOAD\n"
    "x-amz-date:20130524T000000Z\nx-amz-decoded-content-length:66560\nx-amz-storage-class:REDUCED_REDUNDANCY\n\n"
    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
    "x-amz-storage-class\nSTREAMING-AWS4-HMAC-SHA256-PAYLOAD")
EXAMPLE_SEED_STRING_TO_SIGN = (
    "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
    "cee3fed04b70f867d036f722359b0b1f2f0e5dc0efadbc082b76c4c60e316455")

KEY_ID = "EDGEADMIN"
SECRET = "s3cr3t/with+odd=chars"


def parse_suite_request(text: str) -> tuple[str, bytes, dict[str, str], bytes]:
    """
    The method, target, headers (as L{sigv4.header_map} gives them) and
    body of a request written out the way the AWS suite writes them.
    """
    head, _, body = text.partition("\n\n")
    request_line, *header_lines = head.split("\n")
    method, _, rest = request_line.partition(" ")
    target = rest[:rest.rindex(" HTTP/1.1")]
    raw: dict[bytes, list[bytes]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        raw.setdefault(name.encode(), []).append(value.encode())
    return method, target.encode(), sigv4.header_map(raw.items()), body.encode()


def lookup(secrets: dict[str, str]) -> Callable[[str], str | None]:
    return secrets.get


class _Captured(Exception):
    pass


def botocore_request(call: Callable, endpoint: str = "http://127.0.0.1:8080",
                     region: str = "us-east-1") -> tuple[str, bytes, dict[str, str], bytes, float]:
    """
    What a boto3 client with default settings would send for C{call(client)}:
    method, target, headers (as L{sigv4.header_map} gives them), body and
    its signing time.  Nothing is sent: the request is taken from
    botocore's C{before-send} event.
    """
    client = boto3.session.Session(
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name=region,
    ).client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    sent = []

    def capture(request, **kwargs):
        sent.append(request)
        raise _Captured()

    client.meta.events.register("before-send.s3", capture)
    try:
        call(client)
    except _Captured:
        pass
    (request,) = sent
    url = urlsplit(request.url)
    target = (url.path + ("?" + url.query if url.query else "")).encode("ascii")
    headers = sigv4.header_map(
        (name.encode("latin-1"), [value if isinstance(value, bytes) else value.encode("latin-1")])
        for name, value in request.headers.items())
    body = request.body
    if body is None:
        body = b""
    elif not isinstance(body, bytes):
        body = body.read()
    return request.method, target, headers, body, _signed_time(headers)


def signed_with_botocore(method: str, target: str, headers: dict[str, str] | None = None,
                         body: bytes = b"", region: str = "us-east-1",
                         secret: str = SECRET) -> tuple[bytes, dict[str, str], float]:
    """
    C{target} signed by botocore's own S3 signer, as target, headers and
    signing time.
    """
    request = AWSRequest(method=method, url="http://127.0.0.1:8080" + target, data=body, headers=headers or {})
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(KEY_ID, secret), "s3", region).add_auth(request)
    signed = {name.lower(): value for name, value in request.headers.items()}
    signed["host"] = "127.0.0.1:8080"
    return target.encode(), signed, _signed_time(signed)


def _signed_time(headers: dict[str, str]) -> float:
    return timegm(strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ"))


def _suite_case(name: str):
    def test(self):
        self.assert_suite_signature(SUITE_SIGNED_REQUESTS[name])
    test.__doc__ = f"The suite's {name} request signs to the suite's signature."
    return test


def _canonical_case(name: str):
    def test(self):
        self.assert_suite_canonical(*SUITE_CANONICAL_REQUESTS[name])
    test.__doc__ = f"The suite's {name} request canonicalises and hashes as the suite says."
    return test


class SuiteTests(SynchronousTestCase):
    """
    The AWS SigV4 test suite, S3 rules.
    """

    def assert_suite_signature(self, text: str) -> None:
        method, target, headers, body = parse_suite_request(text)
        auth = sigv4.parse_authorization(headers["authorization"])
        path, _, query = target.partition(b"?")
        canonical = sigv4.canonical_request(method, path, query, headers, auth.signed_headers,
                                            hashlib.sha256(body).hexdigest())
        to_sign = sigv4.string_to_sign(headers["x-amz-date"], auth.scope, canonical)
        key = sigv4.signing_key(SUITE_SECRET, auth.date, auth.region, auth.service)
        self.assertEqual(sigv4.sign(key, to_sign), auth.signature)

    def assert_suite_canonical(self, target: str, extra_headers: dict[str, str], canonical: str,
                               request_hash: str) -> None:
        path, _, query = target.encode().partition(b"?")
        headers = {"host": "example.amazonaws.com", **extra_headers}
        signed = canonical.split("\n")[-2].split(";")
        self.assertEqual(sigv4.canonical_request("GET", path, query, headers, signed, sigv4.EMPTY_SHA256),
                         canonical)
        self.assertEqual(sigv4.string_to_sign(SUITE_TIME, SUITE_SCOPE, canonical),
                         f"AWS4-HMAC-SHA256\n{SUITE_TIME}\n{SUITE_SCOPE}\n{request_hash}")

    for _name in SUITE_SIGNED_REQUESTS:
        locals()["test_signature_" + _name.replace("-", "_")] = _suite_case(_name)
    for _name in SUITE_CANONICAL_REQUESTS:
        locals()["test_canonical_" + _name.replace("-", "_")] = _canonical_case(_name)
    del _name

    def test_suite_signing_key(self):
        """The derived key is HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
        self.assertEqual(sigv4.signing_key(SUITE_SECRET, "20150830", "us-east-1", "iam").hex(),
                         "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9")


class ChunkedExampleSeedTests(SynchronousTestCase):
    """
    The seed request of the S3 documentation's chunked-upload example.
    """

    def test_canonical_request(self):
        """The seed request canonicalises to the documented canonical request."""
        auth = sigv4.parse_authorization(EXAMPLE_SEED_HEADERS["authorization"])
        self.assertEqual(
            sigv4.canonical_request("PUT", b"/examplebucket/chunkObject.txt", b"", EXAMPLE_SEED_HEADERS,
                                    auth.signed_headers, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            EXAMPLE_SEED_CANONICAL)

    def test_string_to_sign(self):
        """The documented canonical request gives the documented string to sign."""
        self.assertEqual(sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request",
                                              EXAMPLE_SEED_CANONICAL),
                         EXAMPLE_SEED_STRING_TO_SIGN)

    def test_verify(self):
        """verify_request accepts the example and returns what the chunk signatures chain from."""
        result = sigv4.verify_request("PUT", b"/examplebucket/chunkObject.txt", EXAMPLE_SEED_HEADERS,
                                      lookup({EXAMPLE_KEY_ID: EXAMPLE_SECRET}), EXAMPLE_NOW)
        self.assertEqual(result, sigv4.VerifiedRequest(
            access_key_id=EXAMPLE_KEY_ID, timestamp="20130524T000000Z",
            scope="20130524/us-east-1/s3/aws4_request",
            signing_key=sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3"),
            signature="4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            content_sha256="STREAMING-AWS4-HMAC-SHA256-PAYLOAD"))


class CanonicalFormTests(SynchronousTestCase):
    """
    S3's canonical URI and query string for what real clients send.
    """

    def test_uri_encoded_once(self):
        """A percent-encoded path is decoded once and encoded again the same way."""
        self.assertEqual(sigv4.canonical_uri(b"/media/a%20b/%C3%BC%2B%25"), "/media/a%20b/%C3%BC%2B%25")

    def test_uri_encodes_reserved(self):
        """Characters outside the unreserved set are encoded, whatever the client left bare."""
        self.assertEqual(sigv4.canonical_uri(b"/media/a+b!$'()*,;=:@"),
                         "/media/a%2Bb%21%24%27%28%29%2A%2C%3B%3D%3A%40")

    def test_uri_unreserved_decoded(self):
        """Needlessly encoded unreserved characters are signed bare."""
        self.assertEqual(sigv4.canonical_uri(b"/media/%7Ea%2Db"), "/media/~a-b")

    def test_uri_keeps_slashes(self):
        """Doubled and trailing slashes are signed as sent."""
        self.assertEqual(sigv4.canonical_uri(b"/media/dir//x/"), "/media/dir//x/")

    def test_uri_empty(self):
        """An empty path is "/"."""
        self.assertEqual(sigv4.canonical_uri(b""), "/")

    def test_query_bare_name(self):
        """?uploads and ?uploads= both canonicalise as uploads=."""
        self.assertEqual(sigv4.canonical_query(b"uploads"), "uploads=")
        self.assertEqual(sigv4.canonical_query(b"uploads="), "uploads=")

    def test_query_sorted_and_reencoded(self):
        """Parameters are decoded, encoded again and sorted by name."""
        self.assertEqual(sigv4.canonical_query(b"prefix=a%20b&list-type=2&x-id=ListObjectsV2"),
                         "list-type=2&prefix=a%20b&x-id=ListObjectsV2")

    def test_query_equals_in_value(self):
        """An unencoded "=" inside a value is encoded as %3D, as AWS canonicalises it."""
        self.assertEqual(sigv4.canonical_query(b"a=b=c&x-id=PutObject"), "a=b%3Dc&x-id=PutObject")
        self.assertEqual(sigv4.canonical_query(b"=="), "=%3D")
        self.assertEqual(sigv4.canonical_query(b"a=1&&b=2"), "a=1&b=2")

    def test_query_repeated_names(self):
        """A repeated name sorts by value."""
        self.assertEqual(sigv4.canonical_query(b"a=2&b=1&a=1"), "a=1&a=2&b=1")

    def test_query_plus_is_literal(self):
        """A "+" in the query is a plus sign, as AWS signers encode it, not a space."""
        self.assertEqual(sigv4.canonical_query(b"prefix=a+b"), "prefix=a%2Bb")

    def test_header_value_spaces(self):
        """Header values are trimmed and inner runs of spaces collapsed."""
        self.assertEqual(sigv4.canonical_header_value("  a \t  b  c "), "a b c")

    def test_header_map(self):
        """Names are lower-cased, repeats joined with commas, bytes kept one to one."""
        self.assertEqual(sigv4.header_map([(b"X-Amz-Meta-A", [b" one ", b"two"]), (b"Host", [b"h\xe9"])]),
                         {"x-amz-meta-a": "one,two", "host": "h\xe9"})


class ParseAuthorizationTests(SynchronousTestCase):
    """
    The Authorization header in the spellings clients use, and the broken ones.
    """

    SIGNATURE = "a" * 64

    def test_comma_space(self):
        """Components separated by ", " (boto3, the AWS CLI) parse."""
        auth = sigv4.parse_authorization(
            f"AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, "
            f"SignedHeaders=host;range;x-amz-date, Signature={self.SIGNATURE}")
        self.assertEqual(auth, sigv4.Authorization("AK", "20130524", "us-east-1", "s3", "aws4_request",
                                                   ("host", "range", "x-amz-date"), self.SIGNATURE))
        self.assertEqual(auth.scope, "20130524/us-east-1/s3/aws4_request")

    def test_comma_only_and_extra_spaces(self):
        """Bare commas (the S3 docs, minio) and extra spaces parse the same."""
        for value in [f"AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,"
                      f"SignedHeaders=host,Signature={self.SIGNATURE}",
                      f"AWS4-HMAC-SHA256   Credential=AK/20130524/us-east-1/s3/aws4_request ,  "
                      f"SignedHeaders=host ,Signature={self.SIGNATURE}  "]:
            self.assertEqual(sigv4.parse_authorization(value).signed_headers, ("host",))

    def test_sigv2(self):
        """A Signature Version 2 header is refused as an unsupported mechanism."""
        error = self.assertRaises(S3Error, sigv4.parse_authorization, "AWS AK:c2lnbmF0dXJl")
        self.assertEqual((error.code, error.status), ("InvalidRequest", 400))

    def test_malformed(self):
        """Missing, repeated or ill-formed components are AuthorizationHeaderMalformed."""
        good = ("Credential=AK/20130524/us-east-1/s3/aws4_request", "SignedHeaders=host",
                f"Signature={self.SIGNATURE}")
        for components in [good[:2], good + (good[0],), good + ("Extra=1",),
                           ("Credential=AK/20130524/us-east-1/s3", *good[1:]),
                           ("Credential=AK/2013-05-24/us-east-1/s3/aws4_request", *good[1:]),
                           (good[0], "SignedHeaders=Host;X-Amz-Date", good[2]),
                           (good[0], "SignedHeaders=", good[2]),
                           (*good[:2], "Signature=xyz"), (*good[:2], "Signature")]:
            error = self.assertRaises(S3Error, sigv4.parse_authorization,
                                      "AWS4-HMAC-SHA256 " + ", ".join(components))
            self.assertEqual((error.code, error.status), ("AuthorizationHeaderMalformed", 400), components)


class BotocoreTests(SynchronousTestCase):
    """
    Requests exactly as boto3 and botocore's S3 signer build them verify,
    and the same requests altered do not.
    """

    def verify(self, method: str, target: bytes, headers: dict[str, str], now: float) -> sigv4.VerifiedRequest:
        return sigv4.verify_request(method, target, headers, lookup({KEY_ID: SECRET}), now)

    def assert_refused(self, code: str, method: str, target: bytes, headers: dict[str, str],
                       now: float, secrets: dict[str, str] | None = None) -> S3Error:
        error = self.assertRaises(S3Error, sigv4.verify_request, method, target, headers,
                                  lookup(secrets or {KEY_ID: SECRET}), now)
        self.assertEqual(error.code, code)
        return error

    def test_put_tricky_keys(self):
        """PutObject verifies for keys with spaces, +, %, unicode, // and a trailing /."""
        for key in ["a b", "a+b", "100%", "50%25", "\u00fcn\u00efc\u00f8de/\u043a\u043b\u044e\u0447", "dir//x",
                    "trailing/", "~!$&'()*,;=:@", "a?b#c"]:
            method, target, headers, _, now = botocore_request(
                lambda client: client.put_object(Bucket="media", Key=key, Body=b"x"))
            self.assertEqual(self.verify(method, target, headers, now).access_key_id, KEY_ID, key)

    def test_queries(self):
        """?uploads, ListObjectsV2 with an encoded prefix and ?delete verify."""
        calls = [
            lambda client: client.create_multipart_upload(Bucket="media", Key="k"),
            lambda client: client.list_objects_v2(Bucket="media", Prefix="a b+c/\u00e9", StartAfter="x y"),
            lambda client: client.delete_objects(Bucket="media", Delete={"Objects": [{"Key": "a"}]}),
            lambda client: client.get_object(Bucket="media", Key="k", Range="bytes=0-9", VersionId="v 1"),
            lambda client: client.list_buckets(),
        ]
        for call in calls:
            method, target, headers, _, now = botocore_request(call)
            self.verify(method, target, headers, now)

    def test_wrong_region(self):
        """
        A request signed for another region is AuthorizationHeaderMalformed
        naming the right one, in the body and in x-amz-bucket-region (a
        HEAD error has no body), as S3 answers: what botocore redirects on.
        """
        method, target, headers, _, now = botocore_request(
            lambda client: client.head_bucket(Bucket="media"), region="ap-southeast-2")
        error = self.assert_refused("AuthorizationHeaderMalformed", method, target, headers, now)
        self.assertEqual(error.status, 400)
        self.assertIn("'ap-southeast-2' is wrong; expecting 'us-east-1'", error.message)
        self.assertEqual(error.details["Region"], "us-east-1")
        self.assertEqual(error.headers, {b"x-amz-bucket-region": b"us-east-1"})
        self.assertIn(b"<Region>us-east-1</Region>", error.to_xml("id"))

    def test_configured_region(self):
        """With another region configured, requests must be signed for it."""
        method, target, headers, _, now = botocore_request(
            lambda client: client.head_bucket(Bucket="media"), region="ap-southeast-2")
        verified = sigv4.verify_request(method, target, headers, lookup({KEY_ID: SECRET}), now,
                                        "ap-southeast-2")
        self.assertIn("/ap-southeast-2/s3/", verified.scope)
        method, target, headers, _, now = botocore_request(
            lambda client: client.head_bucket(Bucket="media"))
        error = self.assertRaises(S3Error, sigv4.verify_request, method, target, headers,
                                  lookup({KEY_ID: SECRET}), now, "ap-southeast-2")
        self.assertEqual((error.code, error.details["Region"]),
                         ("AuthorizationHeaderMalformed", "ap-southeast-2"))

    def test_extra_query_parameters(self):
        """Parameters such as x-id=PutObject and bare ?uploads are signed as sent."""
        for target in ["/media/k?x-id=PutObject", "/media/k?uploads", "/media/k?uploads=",
                       "/media?list-type=2&prefix=a%20b", "/media/a%20b?partNumber=1&uploadId=x%2By"]:
            signed_target, headers, now = signed_with_botocore("PUT", target)
            self.verify("PUT", signed_target, headers, now)

    def test_tampered(self):
        """Changing the method, path, query, a signed header or the payload hash breaks the signature."""
        target, headers, now = signed_with_botocore("PUT", "/media/a%20b?x-id=PutObject",
                                                    {"x-amz-meta-colour": "blue"})
        changes = [
            ("POST", target, headers),
            ("PUT", b"/media/a%20c?x-id=PutObject", headers),
            ("PUT", b"/media/a%20b?x-id=GetObject", headers),
            ("PUT", target, {**headers, "x-amz-meta-colour": "red"}),
            ("PUT", target, {**headers, "x-amz-content-sha256": "0" * 64}),
            ("PUT", target, {**headers, "host": "evil.example"}),
        ]
        for method, changed_target, changed_headers in changes:
            error = self.assert_refused("SignatureDoesNotMatch", method, changed_target, changed_headers, now)
            self.assertEqual(error.status, 403)

    def test_mismatch_details(self):
        """SignatureDoesNotMatch carries the canonical request and string to sign, as S3's does."""
        target, headers, now = signed_with_botocore("GET", "/media/k", secret="wrong")
        error = self.assert_refused("SignatureDoesNotMatch", "GET", target, headers, now)
        self.assertTrue(error.details["CanonicalRequest"].startswith("GET\n/media/k\n\n"))
        self.assertTrue(error.details["StringToSign"].startswith("AWS4-HMAC-SHA256\n"))
        self.assertEqual(error.details["AWSAccessKeyId"], KEY_ID)

    def test_unknown_key(self):
        """An access key ID we do not have is InvalidAccessKeyId (403)."""
        target, headers, now = signed_with_botocore("GET", "/media/k")
        error = self.assert_refused("InvalidAccessKeyId", "GET", target, headers, now, {"OTHER": SECRET})
        self.assertEqual((error.status, error.details), (403, {"AWSAccessKeyId": KEY_ID}))

    def test_skew(self):
        """Fifteen minutes either way is accepted, a second more is RequestTimeTooSkewed."""
        target, headers, now = signed_with_botocore("GET", "/media/k")
        self.verify("GET", target, headers, now + 900)
        self.verify("GET", target, headers, now - 900)
        for off in (901, -901):
            error = self.assert_refused("RequestTimeTooSkewed", "GET", target, headers, now + off)
            self.assertEqual(error.status, 403)
            self.assertEqual(error.details["RequestTime"], headers["x-amz-date"])
            self.assertEqual(error.details["MaxAllowedSkewMilliseconds"], "900000")

    def test_unsigned_amz_header(self):
        """An x-amz-* header left out of SignedHeaders is AccessDenied, as on S3."""
        target, headers, now = signed_with_botocore("PUT", "/media/k")
        error = self.assert_refused("AccessDenied", "PUT", target,
                                    {**headers, "x-amz-copy-source": "/media/secret"}, now)
        self.assertEqual(error.details["HeadersNotSigned"], "x-amz-copy-source")

    def test_unsigned_other_header(self):
        """Headers other than x-amz-* may be left unsigned (User-Agent, Expect, Content-Length...)."""
        target, headers, now = signed_with_botocore("PUT", "/media/k")
        self.verify("PUT", target, {**headers, "user-agent": "x", "expect": "100-continue"}, now)


class RefusalTests(SynchronousTestCase):
    """
    The checks verify_request makes before and beside the signature.
    """

    def sign(self, headers: dict[str, str], scope: str = "20130524/us-east-1/s3/aws4_request",
             target: bytes = b"/media/k") -> dict[str, str]:
        """
        C{headers} plus an Authorization header signing them with our own
        signer, for cases botocore cannot produce.
        """
        headers = {"host": "h", "x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD, **headers}
        signed = sorted(headers)
        timestamp, _ = sigv4.request_time(headers)
        canonical = sigv4.canonical_request("GET", target, b"", headers, signed, headers["x-amz-content-sha256"])
        date, region, service, _ = scope.split("/")
        signature = sigv4.sign(sigv4.signing_key(SECRET, date, region, service),
                               sigv4.string_to_sign(timestamp, scope, canonical))
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        return headers

    def verify(self, headers: dict[str, str], target: bytes = b"/media/k",
               now: float = EXAMPLE_NOW) -> sigv4.VerifiedRequest:
        return sigv4.verify_request("GET", target, headers, lookup({KEY_ID: SECRET}), now)

    def assert_refused(self, code: str, headers: dict[str, str], target: bytes = b"/media/k",
                       now: float = EXAMPLE_NOW) -> S3Error:
        error = self.assertRaises(S3Error, self.verify, headers, target, now)
        self.assertEqual(error.code, code)
        return error

    def test_own_signer(self):
        """The helper signer produces requests verify_request accepts (so the refusals below are real)."""
        self.assertEqual(self.verify(self.sign({"x-amz-date": "20130524T000000Z"})).timestamp,
                         "20130524T000000Z")

    def test_anonymous(self):
        """A request without Authorization is AccessDenied (403)."""
        error = self.assert_refused("AccessDenied", {"host": "h"})
        self.assertEqual(error.status, 403)

    def test_presigned_query(self):
        """A query-string signature is refused with AccessDenied saying so."""
        error = self.assert_refused("AccessDenied", {"host": "h"},
                                    b"/media/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=" + b"0" * 64)
        self.assertIn("Query-string", error.message)

    def test_date_header(self):
        """Without x-amz-date the Date header is the signed time, in basic ISO 8601 form."""
        result = self.verify(self.sign({"date": "Fri, 24 May 2013 00:00:00 GMT"}))
        self.assertEqual(result.timestamp, "20130524T000000Z")

    def test_date_header_without_zone(self):
        """A Date in "-0000" form (UTC, zone unstated) is read as UTC, not local time."""
        result = self.verify(self.sign({"date": "Fri, 24 May 2013 00:00:00 -0000"}))
        self.assertEqual(result.timestamp, "20130524T000000Z")

    def test_no_date(self):
        """No usable x-amz-date or Date is AccessDenied, as on S3."""
        for dates in [{}, {"x-amz-date": "2013-05-24T00:00:00Z"}, {"x-amz-date": "2013524T000000Z"},
                      {"date": "yesterday"}]:
            headers = self.sign({"x-amz-date": "20130524T000000Z"})
            del headers["x-amz-date"]
            self.assert_refused("AccessDenied", {**headers, **dates})

    def test_credential_date(self):
        """A credential date other than the request's is AuthorizationHeaderMalformed."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"}, scope="20130523/us-east-1/s3/aws4_request")
        error = self.assert_refused("AuthorizationHeaderMalformed", headers)
        self.assertIn("20130523", error.message)

    def test_wrong_service(self):
        """A scope for a service other than s3 is AuthorizationHeaderMalformed."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"}, scope="20130524/us-east-1/iam/aws4_request")
        self.assert_refused("AuthorizationHeaderMalformed", headers)

    def test_wrong_terminator(self):
        """A scope not ending in aws4_request is AuthorizationHeaderMalformed."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"})
        headers["authorization"] = headers["authorization"].replace("aws4_request", "aws5_request")
        self.assert_refused("AuthorizationHeaderMalformed", headers)

    def test_host_unsigned(self):
        """SignedHeaders without host is AuthorizationHeaderMalformed."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"})
        headers["authorization"] = headers["authorization"].replace("SignedHeaders=host;", "SignedHeaders=")
        self.assert_refused("AuthorizationHeaderMalformed", headers)

    def test_missing_content_sha256(self):
        """A request without x-amz-content-sha256 is InvalidRequest, as on S3."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"})
        del headers["x-amz-content-sha256"]
        self.assert_refused("InvalidRequest", headers)

    def test_bad_content_sha256(self):
        """An x-amz-content-sha256 that is no hex digest nor a known form is InvalidArgument."""
        for value in ["abc", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "z" * 64]:
            headers = self.sign({"x-amz-date": "20130524T000000Z", "x-amz-content-sha256": value})
            self.assert_refused("InvalidArgument", headers)

    def test_payload_forms(self):
        """Every payload form the S3 clients send is accepted and returned."""
        for value in [sigv4.UNSIGNED_PAYLOAD, *sorted(sigv4.STREAMING_FORMS), sigv4.EMPTY_SHA256.upper()]:
            headers = self.sign({"x-amz-date": "20130524T000000Z", "x-amz-content-sha256": value})
            self.assertEqual(self.verify(headers).content_sha256, value)

    def test_signing_key_cached(self):
        """The derived signing key is computed once per secret, day, region and service."""
        headers = self.sign({"x-amz-date": "20130524T000000Z"})
        self.verify(headers)
        hits = sigv4.signing_key.cache_info().hits
        self.verify(headers)
        self.assertEqual(sigv4.signing_key.cache_info().hits, hits + 1)

    def test_cached_key_wrong_secret(self):
        """
        With the right secret's derived key cached, a request signed with
        a wrong secret for the same key ID, day, region and service is
        still SignatureDoesNotMatch.
        """
        good = self.sign({"x-amz-date": "20130524T000000Z"})
        self.verify(good)
        forged = dict(good)
        canonical = sigv4.canonical_request("GET", b"/media/k", b"", good, sorted(
            name for name in good if name != "authorization"), sigv4.UNSIGNED_PAYLOAD)
        to_sign = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", canonical)
        wrong = sigv4.sign(sigv4.signing_key("not-the-secret", "20130524", "us-east-1", "s3"), to_sign)
        forged["authorization"] = good["authorization"].rsplit("=", 1)[0] + "=" + wrong
        self.assert_refused("SignatureDoesNotMatch", forged)
        self.verify(good)

    def test_header_parsed_once_checked_each_time(self):
        """
        An Authorization header that differs from one already verified
        only in its signature is checked afresh: a wrong signature is
        SignatureDoesNotMatch, a malformed one or a changed SignedHeaders
        AuthorizationHeaderMalformed, as for a header never seen.
        """
        good = self.sign({"x-amz-date": "20130524T000000Z"})
        self.verify(good)
        head, signature = good["authorization"].rsplit("Signature=", 1)
        for changed, code in [
            (head + "Signature=" + "0" * 64, "SignatureDoesNotMatch"),
            (head + "Signature=" + signature[:63], "AuthorizationHeaderMalformed"),
            (head + "Signature=" + signature.upper(), "AuthorizationHeaderMalformed"),
            (head.replace("SignedHeaders=", "SignedHeaders=Host;") + "Signature=" + signature,
             "AuthorizationHeaderMalformed"),
            (head + "Signature=" + signature + ", Signature=" + signature, "AuthorizationHeaderMalformed"),
        ]:
            self.assert_refused(code, {**good, "authorization": changed})
        self.verify(good)

    def test_cached_key_changed_secret(self):
        """
        Once a key's secret changes (a SIGHUP reload), a request signed
        with the old secret is SignatureDoesNotMatch although the old
        secret's derived key is cached.
        """
        headers = self.sign({"x-amz-date": "20130524T000000Z"})
        self.verify(headers)
        error = self.assertRaises(S3Error, sigv4.verify_request, "GET", b"/media/k", headers,
                                  lookup({KEY_ID: "the-new-secret"}), EXAMPLE_NOW)
        self.assertEqual(error.code, "SignatureDoesNotMatch")
