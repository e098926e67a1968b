"""
S3 mode end to end: the real daemon (C{twistd -n owncdn}) driven by
boto3 with its default configuration, with
C{request_checksum_calculation="when_required"}, and over HTTPS, where
boto3 sends bodies C{aws-chunked} with a trailing checksum.

boto3 blocks, so each client call runs in a thread (C{deferToThread});
the reactor running the test stays free, and the daemon is another
process anyway.
"""

import hashlib
import io
import os
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import LOCAL, start_daemon, write_config
from tests.test_daemon import make_certificate
from tests.util import asynctest

MIB = 1024 * 1024


def error_of(call, *args, **kwargs) -> tuple[int, str, dict]:
    """
    The HTTP status, S3 error code and response headers of a call that
    must fail.
    """
    try:
        call(*args, **kwargs)
    except ClientError as error:
        response = error.response
        return (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"],
                response["ResponseMetadata"]["HTTPHeaders"])
    raise AssertionError(f"{call} did not fail")


class DaemonCase(TestCase):
    """
    A daemon with a storage bucket C{files}, a file system bucket
    C{disk}, and the keys C{WRITER} and C{READER}.
    """

    https = False

    async def start(self) -> None:
        folder = Path(self.mktemp()).absolute()
        disk = folder / "disk"
        disk.mkdir(parents=True)
        self.keys = write_config(folder / "data", services=[
            {"id": "api", "type": "api"}, {"id": "files", "type": "storage"},
            {"id": "disk", "type": "filesystem", "directory": str(disk)}])
        listen = [LOCAL]
        self.verify = False
        if self.https:
            key_file, cert_file, _ = make_certificate(folder)
            listen.append(f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}")
            self.verify = str(cert_file)
        self.daemon = await start_daemon(self, folder / "data", listen=tuple(listen))
        self.url = self.daemon.url
        if self.https:
            self.url = f"https://127.0.0.1:{self.daemon.ports[1]}"

    def client(self, key: str = "WRITER", secret: str | None = None, region: str = "us-east-1",
               **config):
        """
        A boto3 client, closed before the daemon stops (an idle TLS
        connection would hold up its drain).
        """
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=region, verify=self.verify,
            aws_access_key_id=key, aws_secret_access_key=secret or self.keys.get(key, "x"),
            config=Config(retries={"max_attempts": 1}, **config))
        self.addCleanup(client.close)
        return client


class DefaultClientTests(DaemonCase):
    @asynctest
    async def test_objects(self):
        """Put, get, head, list, copy and delete with a default client: bytes, ETags, metadata, versions."""
        await self.start()
        await deferToThread(self.objects, self.client())

    def objects(self, s3):
        data = b"hello, S3 world\n" * 100
        put = s3.put_object(Bucket="files", Key="dir/a b+c.txt", Body=data, ContentType="text/plain",
                            Metadata={"colour": "blue"}, CacheControl="max-age=60")
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        self.assertEqual((put["ETag"], put["VersionId"]), (etag, "000000000001"))
        got = s3.get_object(Bucket="files", Key="dir/a b+c.txt")
        self.assertEqual(got["Body"].read(), data)
        self.assertEqual((got["ETag"], got["ContentType"], got["Metadata"], got["CacheControl"]),
                         (etag, "text/plain", {"colour": "blue"}, "max-age=60"))
        head = s3.head_object(Bucket="files", Key="dir/a b+c.txt")
        self.assertEqual((head["ContentLength"], head["ETag"], head["LastModified"]),
                         (len(data), etag, got["LastModified"]))
        ranged = s3.get_object(Bucket="files", Key="dir/a b+c.txt", Range="bytes=7-8")
        self.assertEqual((ranged["Body"].read(), ranged["ContentRange"]), (b"S3", f"bytes 7-8/{len(data)}"))
        listed = s3.list_objects_v2(Bucket="files", Prefix="dir/")
        self.assertEqual([(o["Key"], o["ETag"], o["Size"]) for o in listed["Contents"]],
                         [("dir/a b+c.txt", etag, len(data))])
        # Last-Modified has whole seconds; XML times keep the milliseconds.
        self.assertEqual(int(listed["Contents"][0]["LastModified"].timestamp()), head["LastModified"].timestamp())
        self.assertEqual(s3.list_objects(Bucket="files", Delimiter="/")["CommonPrefixes"], [{"Prefix": "dir/"}])
        copied = s3.copy_object(Bucket="files", Key="copy", CopySource={"Bucket": "files", "Key": "dir/a b+c.txt"})
        self.assertEqual(copied["CopyObjectResult"]["ETag"], etag)
        self.assertEqual(s3.get_object(Bucket="files", Key="copy")["Metadata"], {"colour": "blue"})
        deleted = s3.delete_object(Bucket="files", Key="copy")
        self.assertEqual((deleted["DeleteMarker"], deleted["VersionId"]), (True, "000000000003"))
        status, code, headers = error_of(s3.get_object, Bucket="files", Key="copy")
        self.assertEqual((status, code, headers["x-amz-delete-marker"]), (404, "NoSuchKey", "true"))
        versions = s3.list_object_versions(Bucket="files", Prefix="copy")
        self.assertEqual([v["VersionId"] for v in versions["Versions"]], ["000000000002"])
        self.assertEqual([m["VersionId"] for m in versions["DeleteMarkers"]], ["000000000003"])
        s3.delete_object(Bucket="files", Key="copy", VersionId="000000000003")
        self.assertEqual(s3.get_object(Bucket="files", Key="copy")["Body"].read(), data)
        result = s3.delete_objects(Bucket="files", Delete={"Objects": [{"Key": "copy"}, {"Key": "none"}]})
        self.assertEqual(sorted(d["Key"] for d in result["Deleted"]), ["copy", "none"])

    @asynctest
    async def test_buckets_and_errors(self):
        """Bucket answers and the error codes boto3 raises, for writers, readers and strangers."""
        await self.start()
        await deferToThread(self.buckets_and_errors)

    def buckets_and_errors(self):
        s3, reader = self.client(), self.client("READER")
        self.assertEqual([b["Name"] for b in s3.list_buckets()["Buckets"]], ["files", "disk"])
        s3.head_bucket(Bucket="files")
        self.assertIsNone(s3.get_bucket_location(Bucket="files")["LocationConstraint"])
        self.assertEqual(s3.get_bucket_versioning(Bucket="files")["Status"], "Enabled")
        self.assertNotIn("Status", s3.get_bucket_versioning(Bucket="disk"))
        self.assertEqual(s3.get_bucket_acl(Bucket="files")["Grants"][0]["Permission"], "FULL_CONTROL")
        s3.put_object(Bucket="files", Key="k", Body=b"x")
        self.assertEqual(s3.get_object_tagging(Bucket="files", Key="k")["TagSet"], [])
        self.assertEqual(s3.get_object_acl(Bucket="files", Key="k")["Owner"]["ID"], "WRITER")
        self.assertEqual(error_of(s3.get_object, Bucket="files", Key="none")[:2], (404, "NoSuchKey"))
        self.assertEqual(error_of(s3.head_object, Bucket="files", Key="none")[:2], (404, "404"))
        self.assertEqual(error_of(s3.list_objects_v2, Bucket="nope")[:2], (404, "NoSuchBucket"))
        self.assertEqual(error_of(s3.get_object, Bucket="files", Key="k", VersionId="000000000099")[:2],
                         (404, "NoSuchVersion"))
        self.assertEqual(error_of(reader.put_object, Bucket="files", Key="k", Body=b"y")[:2],
                         (403, "AccessDenied"))
        self.assertEqual(error_of(self.client("NOBODY").list_buckets)[:2], (403, "InvalidAccessKeyId"))
        self.assertEqual(error_of(self.client("WRITER", "wrong").list_buckets)[:2], (403, "SignatureDoesNotMatch"))
        self.assertEqual(error_of(s3.get_object, Bucket="files", Key="k", IfMatch='"nope"')[:2],
                         (412, "PreconditionFailed"))
        self.assertEqual(error_of(s3.get_object, Bucket="files", Key="k", Range="bytes=5-")[:2],
                         (416, "InvalidRange"))
        self.assertEqual(error_of(s3.get_object, Bucket="files", Key="k", IfNoneMatch=s3.head_object(
            Bucket="files", Key="k")["ETag"])[:2], (304, "304"))
        self.assertEqual(error_of(s3.put_bucket_policy, Bucket="files", Policy="{}")[:2], (501, "NotImplemented"))

    @asynctest
    async def test_multipart_and_ranged_download(self):
        """upload_fileobj goes multipart (ETag md5-of-md5s-N); download_fileobj reads it back in ranges."""
        await self.start()
        await deferToThread(self.multipart)

    def multipart(self):
        s3 = self.client()
        data = os.urandom(13 * MIB + 5)
        config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=3)
        s3.upload_fileobj(io.BytesIO(data), "files", "big.bin", Config=config)
        md5s = b"".join(hashlib.md5(data[i:i + 5 * MIB]).digest() for i in range(0, len(data), 5 * MIB))
        etag = f'"{hashlib.md5(md5s).hexdigest()}-3"'
        self.assertEqual(s3.head_object(Bucket="files", Key="big.bin")["ETag"], etag)
        self.assertEqual(s3.list_objects_v2(Bucket="files")["Contents"][0]["ETag"], etag)
        out = io.BytesIO()
        s3.download_fileobj("files", "big.bin", out, Config=config)
        self.assertEqual(out.getvalue(), data)
        self.assertEqual(s3.list_multipart_uploads(Bucket="files").get("Uploads", []), [])

    @asynctest
    async def test_filesystem_bucket(self):
        """A file system bucket stores and lists objects without versions."""
        await self.start()
        await deferToThread(self.filesystem)

    def filesystem(self):
        s3 = self.client()
        put = s3.put_object(Bucket="disk", Key="d/f.txt", Body=b"on disk")
        self.assertNotIn("VersionId", put)
        got = s3.get_object(Bucket="disk", Key="d/f.txt")
        self.assertEqual((got["Body"].read(), got["ETag"], got.get("VersionId")),
                         (b"on disk", f'"{hashlib.md5(b"on disk").hexdigest()}"', None))
        self.assertEqual([o["Key"] for o in s3.list_objects_v2(Bucket="disk")["Contents"]], ["d/f.txt"])
        versions = s3.list_object_versions(Bucket="disk")
        self.assertEqual([v["VersionId"] for v in versions["Versions"]], ["null"])
        s3.delete_object(Bucket="disk", Key="d/f.txt")
        self.assertEqual(error_of(s3.get_object, Bucket="disk", Key="d/f.txt")[:2], (404, "NoSuchKey"))


class WhenRequiredTests(DaemonCase):
    @asynctest
    async def test_when_required(self):
        """With request_checksum_calculation=when_required boto3 sends plain signed bodies, stored as sent."""
        await self.start()
        await deferToThread(self.plain_bodies)

    def plain_bodies(self):
        s3 = self.client(request_checksum_calculation="when_required",
                         response_checksum_validation="when_required")
        data = os.urandom(2 * MIB)
        s3.put_object(Bucket="files", Key="plain", Body=data)
        self.assertEqual(s3.get_object(Bucket="files", Key="plain")["Body"].read(), data)
        result = s3.delete_objects(Bucket="files", Delete={"Objects": [{"Key": "plain"}], "Quiet": True})
        self.assertEqual(result.get("Errors", []), [])


class OtherRegionTests(DaemonCase):
    @asynctest
    async def test_client_of_another_region(self):
        """
        A client configured for another region just works: the first
        request of each bucket is refused naming us-east-1 (a HEAD by
        its x-amz-bucket-region header alone), and botocore re-signs it
        for that region and sends it again.
        """
        await self.start()
        await deferToThread(self.other_region)

    def other_region(self):
        s3 = self.client(region="eu-west-3")
        sent = []
        s3.meta.events.register("before-send.s3", lambda request, **kwargs: sent.append(request))
        data = os.urandom(1000)
        self.assertEqual(error_of(s3.head_object, Bucket="files", Key="k")[:2], (404, "404"))
        self.assertEqual(len(sent), 2)
        self.assertIn("/eu-west-3/s3/", sent[0].headers["Authorization"].decode())
        self.assertIn("/us-east-1/s3/", sent[1].headers["Authorization"].decode())
        s3.put_object(Bucket="files", Key="k", Body=data)
        self.assertEqual(s3.get_object(Bucket="files", Key="k")["Body"].read(), data)
        self.assertEqual(len(sent), 4)
        other = self.client(region="ap-southeast-2")
        self.assertEqual(other.get_object(Bucket="files", Key="k")["Body"].read(), data)
        self.assertEqual(other.get_bucket_location(Bucket="files").get("LocationConstraint"), None)


class HTTPSTests(DaemonCase):
    https = True

    @asynctest
    async def test_aws_chunked_over_https(self):
        """Over HTTPS boto3 streams aws-chunked bodies with a trailing checksum; they are stored exactly."""
        await self.start()
        await deferToThread(self.chunked)

    def chunked(self):
        s3 = self.client()
        sent = []
        s3.meta.events.register("before-send.s3", lambda request, **_: sent.append(
            {name.lower(): value for name, value in request.headers.items()}))
        data = os.urandom(3 * MIB + 11)
        s3.put_object(Bucket="files", Key="chunked", Body=io.BytesIO(data))
        self.assertEqual(sent[-1]["x-amz-content-sha256"], b"STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        self.assertEqual(s3.get_object(Bucket="files", Key="chunked")["Body"].read(), data)
        config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
        big = os.urandom(11 * MIB)
        s3.upload_fileobj(io.BytesIO(big), "files", "multi", Config=config)
        out = io.BytesIO()
        s3.download_fileobj("files", "multi", out)
        self.assertEqual(out.getvalue(), big)
        self.assertNotIn("ContentEncoding", s3.head_object(Bucket="files", Key="chunked"))
