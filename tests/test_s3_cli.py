"""
S3 mode end to end with the AWS CLI (v1) against the real daemon:
C{aws s3 cp/sync/ls/rm}, a 100 MiB upload that the CLI sends as a
multipart upload, and C{aws s3api}.

The CLI runs as a child process of the reactor (C{spawnProcess}), so
the test never blocks; it sees only the environment given here, never
the user's AWS configuration.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.daemon import start_daemon, write_config
from tests.util import asynctest

AWS = str(Path(sys.executable).parent / "aws")
MIB = 1024 * 1024
# The CLI's default multipart_chunksize.
CLI_PART = 8 * MIB
CLI_TIMEOUT = 120


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


class CLITests(TestCase):
    async def start(self) -> None:
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir(parents=True)
        keys = write_config(self.folder / "data")
        self.daemon = await start_daemon(self, self.folder / "data")
        self.env = {
            "PATH": os.environ.get("PATH", ""), "HOME": str(self.folder),
            "AWS_ACCESS_KEY_ID": "WRITER", "AWS_SECRET_ACCESS_KEY": keys["WRITER"],
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.folder / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.folder / "no-credentials"),
        }

    async def aws(self, *args: str, fail: bool = False) -> str:
        """
        Run C{aws --endpoint-url <daemon> args...}; its stdout, or its
        stderr when it must fail.
        """
        d = getProcessOutputAndValue(
            AWS, ["--endpoint-url", self.daemon.url, *args], env=self.env, path=str(self.folder))
        out, err, code = await d.addTimeout(CLI_TIMEOUT, reactor)
        if fail:
            self.assertNotEqual(code, 0, out)
            return err.decode()
        self.assertEqual(code, 0, f"aws {' '.join(args)}: {err.decode()}")
        return out.decode()

    @asynctest
    async def test_multipart_cp(self):
        """aws s3 cp uploads 100 MiB as a multipart upload and downloads exactly those bytes."""
        await self.start()
        big = self.folder / "big.bin"
        with open(big, "wb") as handle:
            for _ in range(100):
                handle.write(os.urandom(MIB))
        await self.aws("s3", "cp", str(big), "s3://files/media/big.bin", "--only-show-errors")
        head = json.loads(await self.aws("s3api", "head-object", "--bucket", "files", "--key", "media/big.bin"))
        md5s = b""
        with open(big, "rb") as handle:
            while part := handle.read(CLI_PART):
                md5s += hashlib.md5(part).digest()
        self.assertEqual(head["ETag"], f'"{hashlib.md5(md5s).hexdigest()}-13"')
        self.assertEqual(head["ContentLength"], 100 * MIB)
        back = self.folder / "back.bin"
        await self.aws("s3", "cp", "s3://files/media/big.bin", str(back), "--only-show-errors")
        self.assertEqual(md5_of(back), md5_of(big))
        uploads = json.loads(await self.aws("s3api", "list-multipart-uploads", "--bucket", "files") or "{}")
        self.assertEqual(uploads.get("Uploads", []), [])

    @asynctest
    async def test_sync_ls_rm(self):
        """aws s3 sync uploads a tree with awkward names once, ls lists it, rm --recursive empties it."""
        await self.start()
        site = self.folder / "site"
        names = ["index.html", "a b/c+d.txt", "100%/x.css", "caf\u00e9/\u263a.txt", "deep/er/still/f.js"]
        for name in names:
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(name.encode() * 10)
        out = await self.aws("s3", "sync", str(site), "s3://files/site/", "--no-progress")
        self.assertEqual(out.count("upload:"), len(names))
        again = await self.aws("s3", "sync", str(site), "s3://files/site/", "--no-progress")
        self.assertEqual(again, "")
        listing = await self.aws("s3", "ls", "--recursive", "s3://files/site/")
        listed = [line.split(None, 3)[3] for line in listing.splitlines()]
        self.assertEqual(listed, sorted((f"site/{name}" for name in names), key=lambda n: n.encode()))
        top = await self.aws("s3", "ls", "s3://files/site/")
        self.assertIn("PRE a b/", top)
        self.assertIn("index.html", top)
        await self.aws("s3", "rm", "--recursive", "s3://files/site/", "--only-show-errors")
        self.assertEqual(await self.aws("s3", "ls", "--recursive", "s3://files/"), "")
        self.assertTrue((await self.aws("s3", "ls")).endswith(" files\n"))

    @asynctest
    async def test_s3api(self):
        """aws s3api puts with metadata, reads versions back, deletes one, and reports NoSuchKey."""
        await self.start()
        body = self.folder / "body.txt"
        body.write_bytes(b"first")
        first = json.loads(await self.aws("s3api", "put-object", "--bucket", "files", "--key", "doc.txt",
                                          "--body", str(body), "--metadata", "owner=ops",
                                          "--content-type", "text/plain"))
        body.write_bytes(b"second")
        await self.aws("s3api", "put-object", "--bucket", "files", "--key", "doc.txt", "--body", str(body))
        versions = json.loads(await self.aws("s3api", "list-object-versions", "--bucket", "files"))
        self.assertEqual([(v["VersionId"], v["IsLatest"]) for v in versions["Versions"]],
                         [("000000000002", True), (first["VersionId"], False)])
        out = self.folder / "out.txt"
        got = json.loads(await self.aws("s3api", "get-object", "--bucket", "files", "--key", "doc.txt",
                                        "--version-id", first["VersionId"], str(out)))
        self.assertEqual((out.read_bytes(), got["Metadata"], got["ContentType"]),
                         (b"first", {"owner": "ops"}, "text/plain"))
        await self.aws("s3api", "delete-object", "--bucket", "files", "--key", "doc.txt",
                       "--version-id", "000000000002")
        head = json.loads(await self.aws("s3api", "head-object", "--bucket", "files", "--key", "doc.txt"))
        self.assertEqual(head["VersionId"], first["VersionId"])
        versioning = json.loads(await self.aws("s3api", "get-bucket-versioning", "--bucket", "files"))
        self.assertEqual(versioning["Status"], "Enabled")
        error = await self.aws("s3api", "get-object", "--bucket", "files", "--key", "none", str(out), fail=True)
        self.assertIn("NoSuchKey", error)
