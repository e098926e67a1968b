"""
S3 root and bucket actions in process: ListBuckets, the bucket
configuration answers, ListObjects v1 and v2 and ListObjectVersions
(prefixes, delimiters, markers, paging, URL encoding) and
DeleteObjects.
"""

import base64
import hashlib
from urllib.parse import quote, unquote_plus

from twisted.trial.unittest import TestCase

from tests.test_s3_front import S3Front
from tests.test_s3_objects import b64
from tests.util import asynctest

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
KEYS = ["a/1", "a/2", "a/b/3", "b", "c/4", "c/5", "d"]


class BucketTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    @asynctest
    async def test_list_buckets(self):
        """ListBuckets names the file services the key may read, with the key as owner."""
        reply = await self.s3.request("GET", "/")
        self.assertEqual(reply.body, (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult {NS}>'
            "<Owner><ID>WRITER</ID><DisplayName>WRITER</DisplayName></Owner><Buckets>"
            + "".join(f"<Bucket><Name>{name}</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate>"
                      "</Bucket>" for name in ("files", "other", "plain", "mirror"))
            + "</Buckets></ListAllMyBucketsResult>").encode())
        reply = await self.s3.request("GET", "/", key="LIMITED")
        self.assertEqual(reply.texts("Buckets/Bucket/Name"), ["files"])

    @asynctest
    async def test_head_bucket(self):
        """HeadBucket is 200 with the region for a readable bucket."""
        reply = await self.s3.request("HEAD", "/files")
        self.assertEqual((reply.code, reply.header("x-amz-bucket-region")), (200, "us-east-1"))

    @asynctest
    async def test_location_and_versioning(self):
        """GetBucketLocation is empty (us-east-1); GetBucketVersioning is Enabled for storage only."""
        reply = await self.s3.request("GET", "/files?location")
        self.assertEqual(reply.body, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                                     f'<LocationConstraint {NS}></LocationConstraint>'.encode())
        reply = await self.s3.request("GET", "/files?versioning")
        self.assertEqual(reply.texts("Status"), ["Enabled"])
        reply = await self.s3.request("GET", "/plain?versioning")
        self.assertEqual(reply.body, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                                     f'<VersioningConfiguration {NS}></VersioningConfiguration>'.encode())

    @asynctest
    async def test_configured_region(self):
        """
        With s3Region set, GetBucketLocation and HeadBucket name it, and a
        request signed for another region is AuthorizationHeaderMalformed
        naming it in <Region> and x-amz-bucket-region (HEAD: no body).
        """
        self.s3.web.state.config.s3_region = "eu-central-1"
        reply = await self.s3.request("GET", "/files/k")
        self.assertEqual(reply.error, (400, "AuthorizationHeaderMalformed"))
        self.assertEqual(reply.xml.findtext("Region"), "eu-central-1")
        self.assertEqual(reply.header("x-amz-bucket-region"), "eu-central-1")
        reply = await self.s3.request("HEAD", "/files")
        self.assertEqual((reply.code, reply.body, reply.header("x-amz-bucket-region")),
                         (400, b"", "eu-central-1"))
        reply = await self.s3.request("PUT", "/files/big", b"x" * (2 * 1024 * 1024))
        self.assertEqual(reply.error, (400, "AuthorizationHeaderMalformed"))
        self.s3.region = "eu-central-1"
        reply = await self.s3.request("GET", "/files/big")
        self.assertEqual(reply.error, (404, "NoSuchKey"))
        reply = await self.s3.request("GET", "/files?location")
        self.assertEqual(reply.body, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                                     f'<LocationConstraint {NS}>eu-central-1</LocationConstraint>'.encode())
        reply = await self.s3.request("HEAD", "/files")
        self.assertEqual((reply.code, reply.header("x-amz-bucket-region")), (200, "eu-central-1"))

    @asynctest
    async def test_unset_settings(self):
        """Reading a bucket setting OwnCDN lacks answers as S3 does for one never set: 404 or empty."""
        for subresource, code in (("policy", "NoSuchBucketPolicy"), ("cors", "NoSuchCORSConfiguration"),
                                  ("lifecycle", "NoSuchLifecycleConfiguration"), ("tagging", "NoSuchTagSet"),
                                  ("encryption", "ServerSideEncryptionConfigurationNotFoundError"),
                                  ("website", "NoSuchWebsiteConfiguration"),
                                  ("replication", "ReplicationConfigurationNotFoundError"),
                                  ("object-lock", "ObjectLockConfigurationNotFoundError"),
                                  ("publicAccessBlock", "NoSuchPublicAccessBlockConfiguration"),
                                  ("ownershipControls", "OwnershipControlsNotFoundError")):
            reply = await self.s3.request("GET", f"/files?{subresource}")
            self.assertEqual(reply.error, (404, code), subresource)
            self.assertEqual(reply.xml.findtext("BucketName"), "files")
        reply = await self.s3.request("GET", "/files?requestPayment")
        self.assertEqual(reply.body, f'<?xml version="1.0" encoding="UTF-8"?>\n<RequestPaymentConfiguration '
                                     f'{NS}><Payer>BucketOwner</Payer></RequestPaymentConfiguration>'.encode())
        for subresource, root in (("notification", "NotificationConfiguration"),
                                  ("logging", "BucketLoggingStatus"), ("accelerate", "AccelerateConfiguration")):
            reply = await self.s3.request("GET", f"/files?{subresource}")
            self.assertEqual(reply.body, f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} {NS}></{root}>'.encode())
        reply = await self.s3.request("GET", "/nope?policy")
        self.assertEqual(reply.error, (404, "NoSuchBucket"))
        reply = await self.s3.request("GET", "/other?cors", key="LIMITED")
        self.assertEqual(reply.error, (403, "AccessDenied"))
        reply = await self.s3.request("GET", "/files/doc?policy")
        self.assertEqual(reply.error, (501, "NotImplemented"))


class ListingTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    async def fill(self, keys=KEYS, bucket: str = "files"):
        for key in keys:
            await self.s3.put(f"/{bucket}/{quote(key, safe='/')}", key.encode())
            self.s3.clock.advance(1.5)

    async def pages(self, query: str, marker_name: str, next_name: str, token: bool = False):
        """
        Every page of a listing, following its markers; each page as
        (keys, prefixes).
        """
        pages, marker = [], None
        while True:
            target = f"/files?{query}" + ("" if marker is None else f"&{marker_name}={marker}")
            reply = await self.s3.request("GET", target)
            pages.append((reply.texts("Contents/Key"), reply.texts("CommonPrefixes/Prefix")))
            if reply.xml.findtext("IsTruncated") != "true":
                return pages
            marker = reply.xml.findtext(next_name)
            if marker is None:
                marker = reply.texts("Contents/Key")[-1]
            if token:
                marker = marker.replace("=", "%3D")

    @asynctest
    async def test_list_v1(self):
        """ListObjects v1 lists keys with their ETag, size, time in milliseconds, owner and class."""
        await self.fill(["x"])
        reply = await self.s3.request("GET", "/files")
        self.assertEqual(reply.body, (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {NS}><Name>files</Name>'
            "<Prefix></Prefix><Marker></Marker><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
            "<Contents><Key>x</Key><LastModified>2025-11-27T13:46:52.250Z</LastModified>"
            f'<ETag>"{hashlib.md5(b"x").hexdigest()}"</ETag><Size>1</Size>'
            "<Owner><ID>WRITER</ID><DisplayName>WRITER</DisplayName></Owner>"
            "<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>").encode())

    @asynctest
    async def test_delimiter(self):
        """A delimiter rolls keys up into CommonPrefixes, which count towards max-keys."""
        await self.fill()
        reply = await self.s3.request("GET", "/files?delimiter=/")
        self.assertEqual(reply.texts("Contents/Key"), ["b", "d"])
        self.assertEqual(reply.texts("CommonPrefixes/Prefix"), ["a/", "c/"])
        reply = await self.s3.request("GET", "/files?list-type=2&delimiter=/&prefix=a/")
        self.assertEqual((reply.texts("Contents/Key"), reply.texts("CommonPrefixes/Prefix")),
                         (["a/1", "a/2"], ["a/b/"]))
        self.assertEqual(reply.texts("KeyCount"), ["3"])
        reply = await self.s3.request("GET", "/files?delimiter=/&max-keys=2")
        self.assertEqual((reply.texts("Contents/Key"), reply.texts("CommonPrefixes/Prefix")), (["b"], ["a/"]))
        self.assertEqual((reply.texts("IsTruncated"), reply.texts("NextMarker")), (["true"], ["b"]))

    @asynctest
    async def test_v1_paging(self):
        """Paging ListObjects v1 with NextMarker, or the last key, visits everything once."""
        await self.fill()
        pages = await self.pages("delimiter=/&max-keys=1", "marker", "NextMarker")
        self.assertEqual(pages, [([], ["a/"]), (["b"], []), ([], ["c/"]), (["d"], [])])
        pages = await self.pages("max-keys=3", "marker", "NextMarker")
        self.assertEqual(sum((keys for keys, _ in pages), []), KEYS)
        self.assertEqual(len(pages), 3)

    @asynctest
    async def test_v2_paging(self):
        """ListObjectsV2 pages with continuation tokens, also across common prefixes."""
        await self.fill()
        pages = await self.pages("list-type=2&delimiter=/&max-keys=1", "continuation-token",
                                 "NextContinuationToken", token=True)
        self.assertEqual(pages, [([], ["a/"]), (["b"], []), ([], ["c/"]), (["d"], [])])
        pages = await self.pages("list-type=2&max-keys=2", "continuation-token", "NextContinuationToken",
                                 token=True)
        self.assertEqual(sum((keys for keys, _ in pages), []), KEYS)

    @asynctest
    async def test_v2_parameters(self):
        """start-after, fetch-owner and max-keys=0 behave as on S3; bad values are InvalidArgument."""
        await self.fill()
        reply = await self.s3.request("GET", "/files?list-type=2&start-after=b")
        self.assertEqual(reply.texts("Contents/Key"), ["c/4", "c/5", "d"])
        self.assertEqual((reply.texts("StartAfter"), reply.texts("Contents/Owner")), (["b"], []))
        reply = await self.s3.request("GET", "/files?list-type=2&fetch-owner=true&max-keys=1")
        self.assertEqual(reply.texts("Contents/Owner/ID"), ["WRITER"])
        reply = await self.s3.request("GET", "/files?list-type=2&max-keys=0")
        self.assertEqual((reply.texts("KeyCount"), reply.texts("IsTruncated"), reply.texts("Contents")),
                         (["0"], ["false"], []))
        for query in ("list-type=2&max-keys=-1", "list-type=2&max-keys=x", "list-type=2&continuation-token=%25%25",
                      "list-type=2&encoding-type=base64", "list-type=3"):
            reply = await self.s3.request("GET", f"/files?{query}")
            self.assertEqual(reply.error, (400, "InvalidArgument"), query)

    @asynctest
    async def test_url_encoding(self):
        """encoding-type=url encodes keys, prefixes and markers (space as +, + as %2B) and is echoed."""
        await self.fill(["a b/1", "a+b/2", "x y", "x+y"])
        reply = await self.s3.request("GET", "/files?list-type=2&delimiter=/&encoding-type=url&start-after=a%20")
        self.assertEqual(reply.texts("Contents/Key"), ["x+y", "x%2By"])
        self.assertEqual(reply.texts("CommonPrefixes/Prefix"), ["a+b/", "a%2Bb/"])
        self.assertEqual((reply.texts("StartAfter"), reply.texts("EncodingType")), (["a+"], ["url"]))
        reply = await self.s3.request("GET", "/files?delimiter=/&max-keys=1&encoding-type=url&prefix=x")
        self.assertEqual((reply.texts("Prefix"), reply.texts("NextMarker"), reply.texts("Delimiter")),
                         (["x"], ["x+y"], ["/"]))

    @asynctest
    async def test_utf8_byte_order(self):
        """Listings are in UTF-8 byte order, not UTF-16 order (U+FFFF, which XML 1.0 cannot carry, URL-encoded)."""
        keys = ["\U0001F600", "\uffff", "\u00e9", "Z", "a-b", "a/b", "ab"]
        await self.fill(keys)
        reply = await self.s3.request("GET", "/files?list-type=2&encoding-type=url")
        self.assertEqual([unquote_plus(key) for key in reply.texts("Contents/Key")],
                         sorted(keys, key=lambda k: k.encode()))

    @asynctest
    async def test_versions(self):
        """ListObjectVersions lists versions newest first and delete markers, with IsLatest."""
        await self.fill(["k", "k"])
        await self.s3.request("DELETE", "/files/k")
        await self.fill(["l"])
        reply = await self.s3.request("GET", "/files?versions")
        root = reply.xml
        entries = [(e.tag, e.findtext("Key"), e.findtext("VersionId"), e.findtext("IsLatest")) for e in root
                   if e.tag in ("Version", "DeleteMarker")]
        self.assertEqual(entries, [("DeleteMarker", "k", "000000000003", "true"),
                                   ("Version", "k", "000000000002", "false"),
                                   ("Version", "k", "000000000001", "false"),
                                   ("Version", "l", "000000000004", "true")])
        self.assertEqual(root.findtext("Version/ETag"), f'"{hashlib.md5(b"k").hexdigest()}"')

    @asynctest
    async def test_versions_paging(self):
        """key-marker and version-id-marker page through versions, within a key and across."""
        await self.fill(["k", "k", "k", "l", "m/1", "m/2"])
        seen, query = [], "versions&max-keys=2&delimiter=/"
        while True:
            reply = await self.s3.request("GET", f"/files?{query}")
            seen += [(k, v) for k, v in zip(reply.texts("Version/Key"), reply.texts("Version/VersionId"))]
            seen += [(p, None) for p in reply.texts("CommonPrefixes/Prefix")]
            if reply.xml.findtext("IsTruncated") != "true":
                break
            query = f"versions&max-keys=2&delimiter=/&key-marker={reply.xml.findtext('NextKeyMarker')}"
            if reply.xml.findtext("NextVersionIdMarker"):
                query += f"&version-id-marker={reply.xml.findtext('NextVersionIdMarker')}"
        self.assertEqual(seen, [("k", "000000000003"), ("k", "000000000002"), ("k", "000000000001"),
                                ("l", "000000000004"), ("m/", None)])
        reply = await self.s3.request("GET", "/files?versions&version-id-marker=000000000001")
        self.assertEqual(reply.error, (400, "InvalidArgument"))

    @asynctest
    async def test_versions_without_versioning(self):
        """A bucket without versions lists each current object as version null."""
        await self.fill(["p"], bucket="plain")
        reply = await self.s3.request("GET", "/plain?versions")
        self.assertEqual((reply.texts("Version/Key"), reply.texts("Version/VersionId"),
                          reply.texts("Version/IsLatest")), (["p"], ["null"], ["true"]))


class DeleteObjectsTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    def document(self, keys, quiet: bool = False) -> bytes:
        objects = "".join(f"<Object><Key>{key}</Key></Object>" for key in keys)
        return f"<Delete {NS}><Quiet>{str(quiet).lower()}</Quiet>{objects}</Delete>".encode()

    @asynctest
    async def test_delete_objects(self):
        """Each key is deleted, with a delete marker on a versioned bucket; missing keys count as deleted."""
        for key in ("a", "b"):
            await self.s3.put(f"/files/{key}", b"x")
        body = self.document(["a", "b", "never"])
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        reply = await self.s3.request("POST", "/files?delete", body, headers={"content-md5": md5})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.texts("Deleted/Key"), ["a", "b", "never"])
        self.assertEqual(reply.texts("Deleted/DeleteMarker"), ["true", "true"])
        self.assertEqual(reply.texts("Deleted/DeleteMarkerVersionId"), ["000000000003", "000000000004"])
        listed = await self.s3.request("GET", "/files?list-type=2")
        self.assertEqual(listed.texts("Contents/Key"), [])

    @asynctest
    async def test_quiet_and_checksums(self):
        """Quiet reports only errors; a checksum header or none at all is accepted."""
        await self.s3.put("/files/a", b"x")
        body = self.document(["a", "bad/../key"], quiet=True)
        reply = await self.s3.request("POST", "/files?delete", body, payload="unsigned",
                                      headers={"x-amz-checksum-crc32": b64("crc32", body)})
        self.assertEqual(reply.texts("Deleted"), [])
        self.assertEqual((reply.texts("Error/Key"), reply.texts("Error/Code")), (["bad/../key"], ["InvalidArgument"]))
        reply = await self.s3.request("POST", "/files?delete", self.document(["a"]))
        self.assertEqual(reply.texts("Deleted/Key"), ["a"])

    @asynctest
    async def test_versions(self):
        """A VersionId in DeleteObjects removes that version for good."""
        await self.s3.put("/files/a", b"1")
        await self.s3.put("/files/a", b"2")
        body = "<Delete><Object><Key>a</Key><VersionId>000000000002</VersionId></Object></Delete>".encode()
        reply = await self.s3.request("POST", "/files?delete", body)
        self.assertEqual(reply.texts("Deleted/VersionId"), ["000000000002"])
        self.assertEqual((await self.s3.request("GET", "/files/a")).body, b"1")

    @asynctest
    async def test_bad_documents(self):
        """Malformed, hostile or oversized documents are MalformedXML or MaxMessageLengthExceeded, never 500."""
        bomb = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                b"<Delete><Object><Key>&b;</Key></Object></Delete>")
        for body in (b"", b"<Delete>", b"<Other/>", bomb, b"<Delete><Object/></Delete>",
                     b"<Delete><Quiet>maybe</Quiet><Object><Key>a</Key></Object></Delete>",
                     self.document([f"k{n}" for n in range(1001)])):
            reply = await self.s3.request("POST", "/files?delete", body)
            self.assertEqual(reply.error, (400, "MalformedXML"), body[:60])
        reply = await self.s3.request("POST", "/files?delete", b" " * (8 * 1024 * 1024 + 1), payload="unsigned")
        self.assertEqual(reply.error, (400, "MaxMessageLengthExceeded"))

    @asynctest
    async def test_bad_digest(self):
        """A document that does not match its Content-MD5 is BadDigest and deletes nothing."""
        await self.s3.put("/files/a", b"x")
        md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        reply = await self.s3.request("POST", "/files?delete", self.document(["a"]), headers={"content-md5": md5})
        self.assertEqual(reply.error, (400, "BadDigest"))
        self.assertEqual((await self.s3.request("GET", "/files/a")).body, b"x")
