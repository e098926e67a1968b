"""
S3 mode end to end with the clients operators point at it, each with its
default settings but for the endpoint, credentials, path style and the
certificate to trust, over HTTP and over TLS: s3cmd, the minio Python
SDK, rclone and the AWS SDK for JavaScript v3 (boto3 and the AWS CLI
have their own modules).

s3cmd, rclone and node run as child processes of the reactor
(C{getProcessOutputAndValue}) with an environment of their own, never
the user's; minio blocks, so it runs in a thread (C{deferToThread}).
s3cmd and minio are test dependencies (setup.cfg); rclone (Debian's
package) and the JavaScript SDK (C{npm ci} in tests/js) are not pip
packages, so their tests are skipped where they are not installed.
"""

import gc
import hashlib
import io
import json
import os
import shutil
import ssl
import sys
from pathlib import Path

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error as MinioError
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.daemon import LOCAL, ROOT, start_daemon, write_config
from tests.test_daemon import make_certificate
from tests.util import asynctest

MIB = 1024 * 1024
S3CMD = str(Path(sys.executable).parent / "s3cmd")
RCLONE = shutil.which("rclone")
NODE = shutil.which("node")
JS_FOLDER = ROOT / "tests" / "js"
JS_INSTALLED = (JS_FOLDER / "node_modules" / "@aws-sdk" / "lib-storage").is_dir()
CLIENT_TIMEOUT = 120
# Keys that need encoding everywhere: a space, a plus, non-ASCII.
AWKWARD = "dir/a b+c \u00e9\u263a.txt"
TREE = ["index.html", "a b/c+d.txt", "caf\u00e9/\u263a \U0001F600.txt", "deep/er/f.js"]


def multipart_etag(data: bytes, part: int) -> str:
    md5s = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    return f"{hashlib.md5(md5s).hexdigest()}-{-(-len(data) // part)}"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def decoded(output: bytes) -> str:
    """
    A client's output as text, any bytes that are not UTF-8 kept as they
    are (C{cat} of random bytes).
    """
    return output.decode("utf-8", "surrogateescape")


def close_pool(pool: urllib3.PoolManager) -> None:
    """
    Close a client's connections before the daemon stops: it waits for
    an idle TLS client to answer its close_notify.  An error minio raises
    keeps its response, and so the socket, until it is collected.
    """
    pool.clear()
    gc.collect()


class ClientCase(TestCase):
    """
    A daemon listening on HTTP and TLS (a self-signed certificate the
    clients are told to trust) with a storage bucket C{files} and a file
    system bucket C{disk}; C{self.endpoint} is the one under test.
    """

    https = False

    async def start(self) -> None:
        self.folder = Path(self.mktemp()).absolute()
        disk = self.folder / "disk"
        disk.mkdir(parents=True)
        self.keys = write_config(self.folder / "data", services=[
            {"id": "api", "type": "api"}, {"id": "files", "type": "storage"},
            {"id": "disk", "type": "filesystem", "directory": str(disk)}])
        key_file, self.cert_file, _ = make_certificate(self.folder)
        tls = f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={self.cert_file}"
        self.daemon = await start_daemon(self, self.folder / "data", listen=(LOCAL, tls))
        self.host = f"127.0.0.1:{self.daemon.ports[1 if self.https else 0]}"
        self.endpoint = f"{'https' if self.https else 'http'}://{self.host}"
        # Only what the clients need: no AWS_* variable, no CA bundle of
        # the user's (rclone fails on an AWS_CA_BUNDLE it cannot load).
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.folder), "LANG": "C.UTF-8"}

    async def etag_of(self, key: str) -> str:
        """
        The ETag of an object of C{files}, as another client (minio over
        HTTP) reads it.
        """
        client = Minio(f"127.0.0.1:{self.daemon.ports[0]}", access_key="WRITER",
                       secret_key=self.keys["WRITER"], secure=False)
        return (await deferToThread(client.stat_object, "files", key)).etag

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    async def run_client(self, executable: str, *args: str, fail: bool = False) -> str:
        """
        Run a client; its stdout, or its stderr when it must fail.
        """
        d = getProcessOutputAndValue(executable, args, env=self.env, path=str(self.folder))
        out, err, code = await d.addTimeout(CLIENT_TIMEOUT, reactor)
        if fail:
            self.assertNotEqual(code, 0, out)
            return err.decode()
        self.assertEqual(code, 0, f"{executable} {' '.join(args)}: {decoded(err)}{decoded(out)}")
        return decoded(out)


class S3cmdTests(ClientCase):
    """
    s3cmd 2.x, configured as its documentation says for an S3-compatible
    service: C{host_base} and C{host_bucket} the endpoint (path style).
    """

    async def start(self) -> None:
        await super().start()
        self.config = self.write("s3cfg", (
            "[default]\n"
            f"access_key = WRITER\nsecret_key = {self.keys['WRITER']}\n"
            f"host_base = {self.host}\nhost_bucket = {self.host}\n"
            f"use_https = {self.https}\nca_certs_file = {self.cert_file}\n").encode())

    def s3cmd(self, *args: str, fail: bool = False):
        return self.run_client(S3CMD, "-c", str(self.config), "--no-progress", *args, fail=fail)

    async def ls(self, *args: str) -> list[tuple[str, ...]]:
        """
        The lines of C{s3cmd ls}, each split into its columns, the last
        the object's URL (which may hold spaces).
        """
        lines = []
        for line in (await self.s3cmd("ls", *args)).splitlines():
            url = line.index("s3://")
            lines.append((*line[:url].split(), line[url:]))
        return lines

    @asynctest
    async def test_objects(self):
        """s3cmd puts, lists (v1, delimiter), gets, ranges, copies, moves and deletes awkward keys exactly."""
        await self.start()
        self.assertEqual([line[-1] for line in await self.ls()], ["s3://disk", "s3://files"])
        data = b"hello from s3cmd\n" * 100
        await self.s3cmd("put", str(self.write("small.txt", data)), f"s3://files/{AWKWARD}")
        await self.s3cmd("put", str(self.write("top.txt", b"top")), "s3://files/top.txt")
        top = await self.ls("s3://files/")
        self.assertEqual([(line[0], line[-1]) for line in top], [("DIR", "s3://files/dir/"),
                                                                 (top[1][0], "s3://files/top.txt")])
        listed = await self.ls("--list-md5", "s3://files/dir/")
        self.assertEqual([line[2:] for line in listed], [(str(len(data)), md5_hex(data), f"s3://files/{AWKWARD}")])
        back = self.folder / "back.txt"
        await self.s3cmd("get", f"s3://files/{AWKWARD}", str(back))
        self.assertEqual(back.read_bytes(), data)
        # --continue asks for the rest of a partial file with a Range.
        back.write_bytes(data[:1000])
        await self.s3cmd("get", "--continue", f"s3://files/{AWKWARD}", str(back))
        self.assertEqual(back.read_bytes(), data)
        info = await self.s3cmd("info", f"s3://files/{AWKWARD}")
        self.assertIn(f"File size: {len(data)}", info)
        self.assertIn(f"MD5 sum:   {md5_hex(data)}", info)
        self.assertIn("MIME type: text/plain", info)
        await self.s3cmd("cp", f"s3://files/{AWKWARD}", "s3://files/copies/c\u00f6py +1.txt")
        await self.s3cmd("cp", f"s3://files/{AWKWARD}", "s3://disk/across buckets.txt")
        await self.s3cmd("mv", "s3://files/copies/c\u00f6py +1.txt", "s3://files/moved/m\u00fcved +2.txt")
        await self.s3cmd("modify", "--add-header=Cache-Control:max-age=60", "s3://files/moved/m\u00fcved +2.txt")
        self.assertEqual(await self.s3cmd("get", "s3://files/moved/m\u00fcved +2.txt", "-"), data.decode())
        self.assertEqual([line[2:] for line in await self.ls("--list-md5", "s3://disk/")],
                         [(str(len(data)), md5_hex(data), "s3://disk/across buckets.txt")])
        self.assertEqual([line[-1] for line in await self.ls("-r", "s3://files/")],
                         [f"s3://files/{AWKWARD}", "s3://files/moved/m\u00fcved +2.txt", "s3://files/top.txt"])
        await self.s3cmd("del", "s3://files/top.txt")
        # Recursive removal goes through DeleteObjects.  (s3cmd 2.4 stops
        # after the first of several URLs: one each.)
        for prefix in ("dir/", "moved/"):
            await self.s3cmd("rm", "-r", f"s3://files/{prefix}")
        self.assertEqual(await self.ls("-r", "s3://files/"), [])
        error = await self.s3cmd("get", "s3://files/top.txt", str(back), "--force", fail=True)
        self.assertIn("does not exist", error)

    @asynctest
    async def test_multipart_and_sync(self):
        """s3cmd uploads 12 MiB in 5 MiB parts (S3 multipart ETag) and back; a second sync uploads nothing."""
        await self.start()
        await self.multipart_and_sync()

    async def multipart_and_sync(self) -> None:
        big = os.urandom(12 * MIB)
        await self.s3cmd("put", "--multipart-chunk-size-mb=5", str(self.write("big.bin", big)), "s3://files/big.bin")
        # s3cmd shows the MD5 of the whole file it keeps in its metadata.
        listed = await self.ls("--list-md5", "s3://files/big.bin")
        self.assertEqual(listed[0][2:], (str(len(big)), md5_hex(big), "s3://files/big.bin"))
        self.assertEqual(await self.etag_of("big.bin"), multipart_etag(big, 5 * MIB))
        back = self.folder / "big.back"
        await self.s3cmd("get", "s3://files/big.bin", str(back))
        self.assertEqual(back.read_bytes(), big)
        for name in TREE:
            self.write(f"site/{name}", name.encode() * 3)
        out = await self.s3cmd("sync", f"{self.folder}/site/", "s3://files/site/")
        self.assertEqual(out.count("upload:"), len(TREE))
        again = await self.s3cmd("sync", f"{self.folder}/site/", "s3://files/site/")
        self.assertEqual(again.count("upload:"), 0)
        self.assertEqual([line[-1] for line in await self.ls("-r", "s3://files/site/")],
                         sorted((f"s3://files/site/{name}" for name in TREE), key=lambda n: n.encode()))
        info = await self.s3cmd("info", "s3://files")
        for line in ("Location:  us-east-1", "Versioning:Enabled", "Policy:    none", "CORS:      none",
                     "Expiration rule: none", "ACL:       WRITER: FULL_CONTROL"):
            self.assertIn(line, info)


class S3cmdTLSTests(S3cmdTests):
    https = True

    @asynctest
    async def test_objects(self):
        """Over TLS s3cmd stores and reads back awkward keys exactly."""
        await self.start()
        data = os.urandom(3 * MIB)
        await self.s3cmd("put", str(self.write("small.bin", data)), f"s3://files/{AWKWARD}")
        back = self.folder / "back.bin"
        await self.s3cmd("get", f"s3://files/{AWKWARD}", str(back))
        self.assertEqual(back.read_bytes(), data)

    @asynctest
    async def test_multipart_and_sync(self):
        """Over TLS s3cmd uploads 12 MiB in 5 MiB parts and back; a second sync uploads nothing."""
        await self.start()
        await self.multipart_and_sync()


class MinioTests(ClientCase):
    """
    The minio Python SDK, in a thread.
    """

    def client(self) -> Minio:
        http_client = None
        if self.https:
            # minio's own pool, but trusting our certificate.
            http_client = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=60, read=60), cert_reqs=ssl.CERT_REQUIRED,
                ca_certs=str(self.cert_file),
                retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
            self.addCleanup(close_pool, http_client)
        return Minio(self.host, access_key="WRITER", secret_key=self.keys["WRITER"], secure=self.https,
                     http_client=http_client)

    @asynctest
    async def test_objects(self):
        """minio puts, stats, gets, ranges, lists (v1, v2, versions), copies and deletes awkward keys exactly."""
        await self.start()
        await deferToThread(self.objects, self.client())

    def read(self, client: Minio, key: str, **kwargs) -> bytes:
        response = client.get_object("files", key, **kwargs)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def objects(self, client: Minio) -> None:
        self.assertEqual([b.name for b in client.list_buckets()], ["files", "disk"])
        self.assertEqual((client.bucket_exists("files"), client.bucket_exists("nope")), (True, False))
        data = b"hello from minio\n" * 100
        put = client.put_object("files", AWKWARD, io.BytesIO(data), len(data), content_type="text/plain",
                                metadata={"colour": "blue"})
        self.assertEqual((put.etag, put.version_id), (md5_hex(data), "000000000001"))
        client.put_object("files", "top.txt", io.BytesIO(b"top"), 3)
        self.assertEqual(self.read(client, AWKWARD), data)
        self.assertEqual(self.read(client, AWKWARD, offset=6, length=4), b"from")
        stat = client.stat_object("files", AWKWARD)
        self.assertEqual((stat.etag, stat.size, stat.content_type, stat.metadata["x-amz-meta-colour"],
                          stat.version_id), (md5_hex(data), len(data), "text/plain", "blue", "000000000001"))
        # minio gives the keys of a page, then its common prefixes.
        self.assertEqual([(o.object_name, o.is_dir) for o in client.list_objects("files")],
                         [("top.txt", False), ("dir/", True)])
        for v1 in (False, True):
            listed = client.list_objects("files", prefix="dir/", recursive=True, use_api_v1=v1)
            self.assertEqual([(o.object_name, o.etag, o.size) for o in listed], [(AWKWARD, md5_hex(data), len(data))])
        copy = client.copy_object("files", "copies/c\u00f6py +1.txt", CopySource("files", AWKWARD))
        self.assertEqual((copy.etag, copy.version_id), (md5_hex(data), "000000000003"))
        across = client.copy_object("disk", "across buckets.txt", CopySource("files", AWKWARD, version_id="000000000001"))
        self.assertEqual((across.etag, across.version_id), (md5_hex(data), None))
        client.remove_object("files", "copies/c\u00f6py +1.txt")
        versions = client.list_objects("files", prefix="copies/", recursive=True, include_version=True)
        # minio gives a page's versions, then its delete markers.
        self.assertEqual([(o.object_name, o.version_id, o.is_latest, o.is_delete_marker) for o in versions],
                         [("copies/c\u00f6py +1.txt", "000000000003", "false", False),
                          ("copies/c\u00f6py +1.txt", "000000000004", "true", True)])
        errors = client.remove_objects("files", [DeleteObject(AWKWARD), DeleteObject("top.txt"), DeleteObject("none")])
        self.assertEqual(list(errors), [])
        self.assertEqual(list(client.list_objects("files", recursive=True)), [])
        self.assertEqual(client.get_bucket_versioning("files").status, "Enabled")
        # Settings OwnCDN does not have read as never set, as on S3.
        self.assertIsNone(client.get_bucket_tags("files"))
        self.assertIsNone(client.get_bucket_lifecycle("files"))
        self.assertIsNone(client.get_bucket_encryption("files"))
        self.assertIsNone(client.get_bucket_replication("files"))
        notification = client.get_bucket_notification("files")
        self.assertEqual(notification.queue_config_list, [])
        with self.assertRaises(MinioError) as raised:
            client.get_bucket_policy("files")
        self.assertEqual(raised.exception.code, "NoSuchBucketPolicy")
        with self.assertRaises(MinioError) as raised:
            client.stat_object("files", "none")
        self.assertEqual(raised.exception.code, "NoSuchKey")

    @asynctest
    async def test_multipart(self):
        """minio uploads 12 MiB in 5 MiB parts from a file and a stream of unknown size, and reads them back."""
        await self.start()
        await deferToThread(self.multipart, self.client())

    def multipart(self, client: Minio) -> None:
        big = os.urandom(12 * MIB)
        path = self.write("big.bin", big)
        put = client.fput_object("files", "big.bin", str(path), part_size=5 * MIB)
        self.assertEqual(put.etag, multipart_etag(big, 5 * MIB))
        back = self.folder / "big.back"
        client.fget_object("files", "big.bin", str(back))
        self.assertEqual(back.read_bytes(), big)
        streamed = client.put_object("files", "streamed.bin", io.BytesIO(big[:7 * MIB]), -1, part_size=5 * MIB)
        self.assertEqual(streamed.etag, multipart_etag(big[:7 * MIB], 5 * MIB))
        self.assertEqual(self.read(client, "streamed.bin"), big[:7 * MIB])
        self.assertEqual(client.stat_object("files", "big.bin").etag, multipart_etag(big, 5 * MIB))


class MinioTLSTests(MinioTests):
    https = True

    @asynctest
    async def test_objects(self):
        """Over TLS minio puts, stats, gets, ranges, lists, copies and deletes awkward keys exactly."""
        await self.start()
        await deferToThread(self.objects, self.client())

    @asynctest
    async def test_multipart(self):
        """Over TLS minio uploads 12 MiB in 5 MiB parts from a file and a stream, and reads them back."""
        await self.start()
        await deferToThread(self.multipart, self.client())


class RcloneTests(ClientCase):
    """
    rclone with an S3 remote of C{provider = Other} and path style, as
    its documentation says for S3-compatible services.
    """

    if RCLONE is None:
        skip = "rclone is not installed (apt-get install rclone)"

    async def start(self) -> None:
        await super().start()
        self.config = self.write("rclone.conf", (
            "[own]\ntype = s3\nprovider = Other\naccess_key_id = WRITER\n"
            f"secret_access_key = {self.keys['WRITER']}\nendpoint = {self.endpoint}\n"
            "force_path_style = true\n").encode())

    def rclone(self, *args: str):
        return self.run_client(RCLONE, "--config", str(self.config), "--ca-cert", str(self.cert_file),
                               "--low-level-retries", "1", "--retries", "1", *args)

    async def lsjson(self, path: str, *args: str) -> list[dict]:
        return json.loads(await self.rclone("lsjson", "-R", "--files-only", *args, f"own:{path}"))

    @asynctest
    async def test_large_copy_and_sync(self):
        """rclone copies 70 MiB in one PUT and in 5 MiB parts, exactly; a second sync transfers nothing."""
        await self.start()
        big = os.urandom(70 * MIB)
        path = self.write("big/big70.bin", big)
        await self.rclone("copy", str(path), "own:files/single/")
        await self.rclone("copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(path), "own:files/parts/")
        for prefix in ("single", "parts"):
            self.assertEqual(await self.rclone("md5sum", f"own:files/{prefix}"), f"{md5_hex(big)}  big70.bin\n")
        back = self.folder / "back"
        await self.rclone("copy", "own:files/parts/big70.bin", str(back))
        self.assertEqual((back / "big70.bin").read_bytes(), big)
        # A range of the multipart object.
        self.assertEqual(await self.rclone("cat", "--offset", str(5 * MIB - 3), "--count", "6",
                                           "own:files/parts/big70.bin"), decoded(big[5 * MIB - 3:5 * MIB + 3]))
        for name in TREE:
            self.write(f"site/{name}", name.encode() * 3)
        for log, copied in (("first.log", len(TREE)), ("second.log", 0)):
            await self.rclone("sync", "-v", "--log-file", str(self.folder / log), str(self.folder / "site"),
                              "own:files/site")
            self.assertEqual((self.folder / log).read_text().count(": Copied (new)"), copied, log)
        self.assertEqual(sorted(entry["Path"] for entry in await self.lsjson("files/site")), sorted(TREE))
        await self.rclone("check", str(self.folder / "site"), "own:files/site")

    @asynctest
    async def test_objects(self):
        """rclone lists buckets, copies server side, moves, lists versions and deletes awkward keys exactly."""
        await self.start()
        self.assertIn(" files\n", await self.rclone("lsd", "own:"))
        data = b"hello from rclone\n" * 100
        await self.rclone("copyto", str(self.write("small.txt", data)), f"own:files/{AWKWARD}")
        [entry] = await self.lsjson("files/dir", "--hash")
        self.assertEqual((entry["Path"], entry["Size"], entry["Hashes"]["md5"]),
                         (AWKWARD.removeprefix("dir/"), len(data), md5_hex(data)))
        await self.rclone("copyto", f"own:files/{AWKWARD}", "own:files/copies/c\u00f6py +1.txt")
        await self.rclone("moveto", "own:files/copies/c\u00f6py +1.txt", "own:files/moved/m\u00fcved +2.txt")
        await self.rclone("copyto", f"own:files/{AWKWARD}", "own:disk/across buckets.txt")
        self.assertEqual(await self.rclone("cat", "own:files/moved/m\u00fcved +2.txt"), data.decode())
        self.assertEqual(await self.rclone("cat", "own:disk/across buckets.txt"), data.decode())
        self.assertEqual(await self.rclone("lsf", "own:files"), "dir/\nmoved/\n")
        # The moved-away copy is an old version behind a delete marker.
        [version] = await self.lsjson("files/copies", "--s3-versions")
        self.assertRegex(version["Path"], r"^c\u00f6py \+1-v\d{4}-\d\d-\d\d-\d{6}-\d{3}\.txt$")
        self.assertEqual(await self.rclone("backend", "versioning", "own:files"), "Enabled\n")
        await self.rclone("delete", "own:files/moved")
        await self.rclone("purge", "own:files/dir")
        self.assertEqual(await self.lsjson("files"), [])


class RcloneTLSTests(RcloneTests):
    https = True

    @asynctest
    async def test_large_copy_and_sync(self):
        """Over TLS rclone copies 70 MiB in one PUT and in parts, exactly; a second sync transfers nothing."""
        await RcloneTests.test_large_copy_and_sync(self)

    @asynctest
    async def test_objects(self):
        """Over TLS rclone copies server side, moves, lists versions and deletes awkward keys exactly."""
        await RcloneTests.test_objects(self)


class JavaScriptTests(ClientCase):
    """
    The AWS SDK for JavaScript v3 (@aws-sdk/client-s3 and lib-storage's
    Upload) running tests/js/s3_check.mjs, which prints what the SDK
    returned.
    """

    if NODE is None or not JS_INSTALLED:
        skip = "the AWS SDK for JavaScript is not installed (npm ci in tests/js)"

    @asynctest
    async def test_sdk(self):
        """The JS SDK's puts (checksummed, streamed aws-chunked, multipart), gets, lists, copies and deletes are exact."""
        await self.start()
        big = os.urandom(12 * MIB)
        self.write("js/big.bin", big)
        small = self.write("js/small.txt", b"streamed with unknown length\n").read_bytes()
        args = [str(JS_FOLDER / "s3_check.mjs"), self.endpoint, "WRITER", self.keys["WRITER"], str(self.folder / "js")]
        if self.https:
            args.append(str(self.cert_file))
        report = json.loads(await self.run_client(NODE, *args))
        text = b"hello from javascript\n"
        etag = f'"{md5_hex(text)}"'
        key = "js/a b+c \u00e9.txt"
        self.assertEqual((report["buckets"], report["headBucket"], report["location"], report["versioning"]),
                         (["files", "disk"], 200, None, "Enabled"))
        self.assertEqual(report["put"], {"etag": etag, "version": "000000000001"})
        self.assertEqual(report["streamed"], f'"{md5_hex(small)}"')
        self.assertEqual(report["get"], {"body": text.decode(), "etag": etag, "type": "text/plain",
                                         "metadata": {"colour": "blue"}})
        self.assertEqual(report["range"], {"body": "from", "contentRange": f"bytes 6-9/{len(text)}"})
        self.assertEqual(report["head"], {"length": len(text), "etag": etag, "version": "000000000001"})
        self.assertEqual(report["upload"], f'"{multipart_etag(big, 5 * MIB)}"')
        self.assertTrue(report["bigBack"])
        self.assertEqual(report["copy"], etag)
        self.assertEqual(report["listV2"], [
            [key, etag, len(text)], ["js/big.bin", f'"{multipart_etag(big, 5 * MIB)}"', len(big)],
            ["js/copy \u00fc+.txt", etag, len(text)], ["js/streamed.txt", f'"{md5_hex(small)}"', len(small)]])
        self.assertEqual(report["listV1Prefixes"], ["js/"])
        self.assertEqual(report["delete"], {"marker": True, "version": "000000000005"})
        self.assertEqual(report["versions"], {"versions": [["js/copy \u00fc+.txt", "000000000004", False]],
                                              "markers": [["js/copy \u00fc+.txt", "000000000005", True]]})
        self.assertEqual(report["deleteMany"], {"deleted": ["js/big.bin", "js/none", "js/streamed.txt"], "errors": []})
        self.assertEqual(report["left"], [key])


class JavaScriptTLSTests(JavaScriptTests):
    https = True

    @asynctest
    async def test_sdk(self):
        """Over TLS the JS SDK's puts, multipart upload, gets, lists, copies and deletes are exact."""
        await JavaScriptTests.test_sdk(self)
