"""
Live replication between real daemons on 127.0.0.1: convergence after a
burst, SIGKILL of either side, read-only replicas and chains.

Convergence is awaited as an event: a long poll of C{syncnext} on the
replica, which answers as soon as the replica has applied the change
asked about (bounded by C{wait} and a total deadline).
"""

import hashlib
import io
import random
from pathlib import Path

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from owncdn import config as configmod
from tests.daemon import kill_hard, start_daemon, write_config
from tests.util import asynctest

KEY = "writer-secret-0123456789"
CONVERGE_DEADLINE = 60


class Node:
    """
    One daemon and the calls the tests make to it.
    """

    def __init__(self, process, sid: str):
        self.process = process
        self.sid = sid

    @property
    def url(self) -> str:
        return self.process.url

    async def call(self, method, function, data=None, **params):
        params.setdefault("sid", self.sid)
        response = await treq.request(method, f"{self.url}/{function}", params=params,
                                      data=data, headers={"x-owncdn-key": KEY},
                                      timeout=30, persistent=False)
        return response.code, await response.content()

    async def json(self, method, function, data=None, **params):
        import json
        code, body = await self.call(method, function, data, **params)
        return code, json.loads(body)

    async def put(self, path: str, data: bytes):
        code, body = await self.json("PUT", "uploadfile", data=data, path=path)
        assert code == 200, body
        return body

    async def delete(self, path: str):
        code, body = await self.json("DELETE", "deletefile", path=path)
        assert code == 200, body
        return body

    async def last(self) -> int:
        code, body = await self.json("GET", "syncnext", after="0", limit="1")
        assert code == 200, body
        return body["last"]

    async def wait_for(self, change_id: int) -> None:
        """
        Long-poll until this node holds change C{change_id}.
        """
        deadline = reactor.seconds() + CONVERGE_DEADLINE
        while reactor.seconds() < deadline:
            code, body = await self.json("GET", "syncnext", after=str(change_id - 1),
                                         limit="1", wait="10")
            if code == 200 and body["last"] >= change_id:
                return
        raise AssertionError(f"{self.url} did not reach change {change_id}")

    async def snapshot(self) -> dict:
        """
        Everything a user can read: the file list, each file's bytes and
        each path's version list.
        """
        code, listing = await self.json("GET", "filelist", limit="1000")
        assert code == 200, listing
        files = {}
        for item in listing["files"]:
            code, data = await self.call("GET", "getfile", path=item["path"])
            files[item["path"]] = (item["size"], item["etag"], item["contentType"],
                                   hashlib.sha256(data).hexdigest())
        return {"files": files}

    async def versions(self, paths) -> dict:
        result = {}
        for path in sorted(paths):
            code, body = await self.json("GET", "versionlist", path=path)
            result[path] = body.get("versions") if code == 200 else code
        return result


def primary_config(data_dir: Path):
    write_config(data_dir, services=[{"id": "api", "type": "api"},
                                     {"id": "media", "type": "storage"}])


def replica_config(data_dir: Path, source_url: str, source_sid: str, sid: str):
    write_config(data_dir, services=[
        {"id": "api", "type": "api"},
        {"id": sid, "type": "storage", "replica": {"source": "up", "sid": source_sid}},
    ], replicationSources=[{"id": "up", "name": "Upstream", "url": source_url, "key": KEY}])


class ReplicationTests(TestCase):
    timeout = 240

    async def start_primary(self, listen=("tcp:0:interface=127.0.0.1",)):
        data_dir = Path(self.mktemp())
        primary_config(data_dir)
        process = await start_daemon(self, data_dir, listen=listen)
        return Node(process, "media"), data_dir

    async def start_replica(self, source: Node, source_sid="media", sid="copy", data_dir=None):
        if data_dir is None:
            data_dir = Path(self.mktemp())
            replica_config(data_dir, source.url + "/", source_sid, sid)
        process = await start_daemon(self, data_dir)
        return Node(process, sid), data_dir

    async def burst(self, node: Node, count: int, seed: int = 1) -> set:
        """
        Mixed uploads, overwrites and deletes; returns every path touched.
        """
        rng = random.Random(seed)
        paths = [f"dir{i % 3}/file-{i}.bin" for i in range(max(4, count // 3))]
        live: set = set()
        touched: set = set()
        for _ in range(count):
            path = rng.choice(paths)
            if path in live and rng.random() < 0.25:
                await node.delete(path)
                live.discard(path)
            else:
                await node.put(path, rng.randbytes(rng.choice([0, 10, 1000, 70000, 300000])))
                live.add(path)
            touched.add(path)
        return touched

    async def assert_same(self, primary: Node, replica: Node, paths) -> None:
        self.assertEqual(await replica.last(), await primary.last())
        self.assertEqual(await replica.snapshot(), await primary.snapshot())
        self.assertEqual(await replica.versions(paths), await primary.versions(paths))

    @asynctest
    async def test_replica_converges_after_burst(self):
        """After mixed uploads, overwrites and deletes the replica matches the primary exactly."""
        primary, _ = await self.start_primary()
        replica, _ = await self.start_replica(primary)
        paths = await self.burst(primary, 60)
        await replica.wait_for(await primary.last())
        await self.assert_same(primary, replica, paths)

    @asynctest
    async def test_replica_refuses_writes(self):
        """Uploads and deletes on a replica get ReadOnlyReplica (409) and change nothing."""
        primary, _ = await self.start_primary()
        await primary.put("a.txt", b"alpha")
        replica, _ = await self.start_replica(primary)
        await replica.wait_for(1)
        code, body = await replica.json("PUT", "uploadfile", data=b"x", path="b.txt")
        self.assertEqual((code, body["error"]["code"]), (409, "ReadOnlyReplica"))
        code, body = await replica.json("DELETE", "deletefile", path="a.txt")
        self.assertEqual((code, body["error"]["code"]), (409, "ReadOnlyReplica"))
        self.assertEqual(await replica.last(), 1)

    @asynctest
    async def test_replica_killed_mid_burst_converges(self):
        """A replica SIGKILLed during a burst resumes after restart: nothing lost or applied twice."""
        primary, _ = await self.start_primary()
        replica, replica_dir = await self.start_replica(primary)
        paths = await self.burst(primary, 20, seed=2)
        await kill_hard(replica.process)
        paths |= await self.burst(primary, 30, seed=3)
        replica, _ = await self.start_replica(primary, data_dir=replica_dir)
        await replica.wait_for(await primary.last())
        await self.assert_same(primary, replica, paths)

    @asynctest
    async def test_primary_killed_and_restarted(self):
        """A replica backs off while its primary is down and converges once it is back."""
        primary, primary_dir = await self.start_primary()
        replica, _ = await self.start_replica(primary)
        paths = await self.burst(primary, 10, seed=4)
        await replica.wait_for(await primary.last())
        port = primary.process.ports[0]
        await kill_hard(primary.process)
        process = await start_daemon(self, primary_dir,
                                     listen=(f"tcp:{port}:interface=127.0.0.1",))
        primary = Node(process, "media")
        paths |= await self.burst(primary, 10, seed=5)
        await replica.wait_for(await primary.last())
        await self.assert_same(primary, replica, paths)

    @asynctest
    async def test_sighup_takes_a_new_source_key(self):
        """A replica whose source key was wrong syncs after the key is fixed and SIGHUP sent."""
        primary, _ = await self.start_primary()
        await primary.put("a.txt", b"alpha")
        data_dir = Path(self.mktemp())
        replica_config(data_dir, primary.url + "/", "media", "copy")
        raw = configmod.load(data_dir).raw
        raw["replicationSources"][0]["key"] = "wrong-secret-0123456789"
        configmod.save(data_dir, raw)
        replica, _ = await self.start_replica(primary, data_dir=data_dir)
        deadline = reactor.seconds() + 10
        state = None
        while reactor.seconds() < deadline:
            code, listing = await replica.json("GET", "servicelist")
            (entry,) = [e for e in listing["services"] if e["id"] == "copy"]
            state = entry["replication"]
            if state["state"] == "retrying":
                break
            await defer.Deferred.fromCoroutine(_tick())
        self.assertEqual(state["state"], "retrying")
        self.assertIn("401", state["last_result"])
        raw["replicationSources"][0]["key"] = KEY
        configmod.save(data_dir, raw)
        replica.process.signal("HUP")
        await replica.wait_for(1)
        code, body = await replica.call("GET", "getfile", path="a.txt")
        self.assertEqual((code, body), (200, b"alpha"))

    @asynctest
    async def test_chain_of_replicas(self):
        """A replica of a replica converges to the primary too."""
        primary, _ = await self.start_primary()
        first, _ = await self.start_replica(primary)
        second, _ = await self.start_replica(first, source_sid="copy", sid="copy2")
        paths = await self.burst(primary, 30, seed=6)
        await second.wait_for(await primary.last())
        await self.assert_same(primary, second, paths)

    @asynctest
    async def test_status_reports_replication(self):
        """owncdn status and servicelist show the replica's source and last applied change."""
        primary, _ = await self.start_primary()
        await primary.put("a.txt", b"alpha")
        replica, replica_dir = await self.start_replica(primary)
        await replica.wait_for(1)
        from owncdn.cli import main
        import io
        import contextlib
        out = io.StringIO()
        deadline = reactor.seconds() + 10
        while reactor.seconds() < deadline:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(main(["status", "--data-dir", str(replica_dir)]), 0)
            if "last applied change 1" in out.getvalue():
                break
            await defer.Deferred.fromCoroutine(_tick())
        self.assertIn("replica of up/media: ok, last applied change 1", out.getvalue())
        self.assertNotIn(KEY, out.getvalue())
        code, listing = await replica.json("GET", "servicelist")
        (entry,) = [s for s in listing["services"] if s["id"] == "copy"]
        self.assertEqual({k: entry["replication"][k] for k in ("source", "remote_sid", "state",
                                                                "last_applied")},
                         {"source": "up", "remote_sid": "media", "state": "ok",
                          "last_applied": 1})
        self.assertIsNotNone(configmod.load(replica_dir))


async def _tick():
    from twisted.internet import task
    await task.deferLater(reactor, 0.1)


class S3ReplicationTests(TestCase):
    timeout = 120

    @asynctest
    async def test_s3_metadata_and_version_purges_replicate(self):
        """S3 user metadata, a multipart ETag and a version purge reach the replica as on the primary."""
        import boto3
        from botocore.config import Config
        from boto3.s3.transfer import TransferConfig
        from twisted.internet.threads import deferToThread

        data_dir = Path(self.mktemp())
        primary_config(data_dir)
        process = await start_daemon(self, data_dir)
        primary = Node(process, "media")
        replica_dir = Path(self.mktemp())
        replica_config(replica_dir, primary.url + "/", "media", "copy")
        replica = Node(await start_daemon(self, replica_dir), "copy")

        def client(url):
            made = boto3.session.Session().client(
                "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="WRITER",
                aws_secret_access_key=KEY, config=Config(retries={"max_attempts": 1}))
            self.addCleanup(made.close)
            return made

        upstream, downstream = client(primary.url), client(replica.url)
        put = await deferToThread(upstream.put_object, Bucket="media", Key="a.txt", Body=b"one",
                                  Metadata={"colour": "blue"}, CacheControl="max-age=60")
        await deferToThread(upstream.put_object, Bucket="media", Key="a.txt", Body=b"two")
        await deferToThread(upstream.put_object, Bucket="media", Key="b.txt", Body=b"meta",
                            Metadata={"colour": "green"}, CacheControl="no-cache",
                            ContentType="text/x-note")
        big = random.Random(3).randbytes(6 * 1024 * 1024)
        await deferToThread(upstream.upload_fileobj, io.BytesIO(big), "media", "big.bin",
                            Config=TransferConfig(multipart_threshold=5 * 1024 * 1024,
                                                  multipart_chunksize=5 * 1024 * 1024))
        await deferToThread(upstream.delete_object, Bucket="media", Key="a.txt",
                            VersionId=put["VersionId"])
        await replica.wait_for(await primary.last())
        for bucket, s3 in (("media", upstream), ("copy", downstream)):
            head = await deferToThread(s3.head_object, Bucket=bucket, Key="big.bin")
            self.assertTrue(head["ETag"].endswith('-2"'), head["ETag"])
            versions = await deferToThread(s3.list_object_versions, Bucket=bucket, Prefix="a.txt")
            self.assertEqual(len(versions["Versions"]), 1)
        noted = await deferToThread(downstream.head_object, Bucket="copy", Key="b.txt")
        self.assertEqual((noted["Metadata"], noted["CacheControl"], noted["ContentType"]),
                         ({"colour": "green"}, "no-cache", "text/x-note"))
        first = await deferToThread(upstream.head_object, Bucket="media", Key="big.bin")
        copied = await deferToThread(downstream.head_object, Bucket="copy", Key="big.bin")
        self.assertEqual(copied["ETag"], first["ETag"])
        self.assertEqual(await replica.snapshot(), await primary.snapshot())
