"""
The standard-mode file functions against the real daemon and its SQLite
storage: round trips, ranges across chunk boundaries, validators,
Brotli, versions, listings, bad input, and SIGKILL crash safety.
"""

import base64
import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path

import brotli
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from owncdn.storage.chunks import CHUNK_SIZE
from tests.daemon import kill_hard, start_daemon, write_config
from tests.util import asynctest

KEY = "writer-secret-0123456789"


class Client:
    def __init__(self, url: str, sid: str = "files"):
        self.url = url
        self.sid = sid

    async def request(self, method, function, data=None, headers=None, **params):
        params.setdefault("sid", self.sid)
        all_headers = {"x-owncdn-key": KEY}
        all_headers.update(headers or {})
        response = await treq.request(method, f"{self.url}/{function}", params=params,
                                      data=data, headers=all_headers, timeout=60,
                                      persistent=False)
        return response, await response.content()

    async def json(self, method, function, data=None, headers=None, **params):
        response, body = await self.request(method, function, data, headers, **params)
        return response.code, json.loads(body) if body else None

    async def upload(self, path, data, headers=None):
        code, body = await self.json("PUT", "uploadfile", data=data, headers=headers, path=path)
        assert code == 200, body
        return body

    async def get(self, path, headers=None, **params):
        return await self.request("GET", "getfile", headers=headers, path=path, **params)


class FileFunctionTests(TestCase):
    timeout = 120

    async def start(self):
        self.data_dir = Path(self.mktemp())
        write_config(self.data_dir)
        self.daemon = await start_daemon(self, self.data_dir)
        return Client(self.daemon.url)

    @asynctest
    async def test_round_trip_and_ranges(self):
        """Bytes round-trip exactly, and ranges crossing chunk boundaries are exact (206)."""
        client = await self.start()
        data = random.Random(7).randbytes(CHUNK_SIZE * 2 + 12345)
        info = await client.upload("big/blob.bin", data)
        self.assertEqual(info["size"], len(data))
        self.assertEqual(info["etag"], hashlib.md5(data).hexdigest())
        self.assertEqual(info["sha256"], hashlib.sha256(data).hexdigest())
        response, body = await client.get("big/blob.bin")
        self.assertEqual(body, data)
        self.assertEqual(response.headers.getRawHeaders("etag"), [f'"{info["etag"]}"'])
        self.assertEqual(response.headers.getRawHeaders("x-owncdn-version"), [info["version"]])
        self.assertEqual(response.headers.getRawHeaders("accept-ranges"), ["bytes"])
        start, end = CHUNK_SIZE - 10, 2 * CHUNK_SIZE + 10
        response, body = await client.get("big/blob.bin", {"range": f"bytes={start}-{end}"})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[start:end + 1])
        self.assertEqual(response.headers.getRawHeaders("content-range"),
                         [f"bytes {start}-{end}/{len(data)}"])
        response, body = await client.get("big/blob.bin", {"range": "bytes=-100"})
        self.assertEqual((response.code, body), (206, data[-100:]))

    @asynctest
    async def test_unsatisfiable_and_malformed_ranges(self):
        """A range past the end gets 416; a malformed one is ignored (full 200)."""
        client = await self.start()
        await client.upload("a.txt", b"0123456789")
        response, _ = await client.get("a.txt", {"range": "bytes=10-20"})
        self.assertEqual(response.code, 416)
        self.assertEqual(response.headers.getRawHeaders("content-range"), ["bytes */10"])
        for bad in ("bytes=abc", "bytes=5-2", "pages=1-2", "bytes=0-1,3-4"):
            response, body = await client.get("a.txt", {"range": bad})
            self.assertEqual((response.code, body), (200, b"0123456789"), bad)

    @asynctest
    async def test_head_and_conditional_requests(self):
        """HEAD has the headers without a body; If-None-Match and If-Modified-Since give 304."""
        client = await self.start()
        info = await client.upload("page.html", b"<p>hello</p>")
        response, body = await client.request("HEAD", "getfile", path="page.html")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders("content-length"), ["12"])
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html"])
        response, body = await client.get("page.html", {"if-none-match": f'"{info["etag"]}"'})
        self.assertEqual((response.code, body), (304, b""))
        modified = response.headers.getRawHeaders("last-modified")[0]
        response, body = await client.get("page.html", {"if-modified-since": modified})
        self.assertEqual((response.code, body), (304, b""))
        response, body = await client.get("page.html", {"if-none-match": '"other"'})
        self.assertEqual((response.code, body), (200, b"<p>hello</p>"))

    @asynctest
    async def test_brotli_served_to_clients_that_accept_it(self):
        """Compressible content comes as Content-Encoding: br when accepted, identity otherwise."""
        client = await self.start()
        text = b"the same words again and again " * 2000
        await client.upload("words.txt", text)
        response, body = await client.get("words.txt", {"accept-encoding": "gzip, br"})
        self.assertEqual(response.headers.getRawHeaders("content-encoding"), ["br"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Accept-Encoding"])
        self.assertLess(len(body), len(text))
        self.assertEqual(brotli.decompress(body), text)
        response, body = await client.get("words.txt", {"accept-encoding": "gzip"})
        # treq's decoder leaves an empty Content-Encoding where there was none.
        self.assertNotIn("br", response.headers.getRawHeaders("content-encoding") or [])
        self.assertEqual(body, text)

    @asynctest
    async def test_versions_and_delete(self):
        """Overwrites keep versions newest first; delete leaves a marker; old versions stay readable."""
        client = await self.start()
        first = await client.upload("doc.txt", b"one")
        second = await client.upload("doc.txt", b"two")
        code, deleted = await client.json("DELETE", "deletefile", path="doc.txt")
        self.assertEqual((code, deleted["deleted"], deleted["path"]), (200, True, "doc.txt"))
        code, listing = await client.json("GET", "versionlist", path="doc.txt")
        self.assertEqual([(v["version"], v["deleted"], v["current"]) for v in listing["versions"]], [
            (deleted["version"], True, True),
            (second["version"], False, False),
            (first["version"], False, False)])
        response, body = await client.get("doc.txt")
        self.assertEqual(json.loads(body)["error"]["code"], "NoSuchFile")
        response, body = await client.get("doc.txt", version=first["version"])
        self.assertEqual((response.code, body), (200, b"one"))
        response, body = await client.get("doc.txt", version="999999999999")
        self.assertEqual((response.code, json.loads(body)["error"]["code"]), (404, "NoSuchVersion"))
        code, body = await client.json("DELETE", "deletefile", path="doc.txt")
        self.assertEqual((code, body["error"]["code"]), (404, "NoSuchFile"))

    @asynctest
    async def test_filelist_paging_and_prefix(self):
        """filelist pages in path order with `after`/`next` and filters by prefix."""
        client = await self.start()
        names = ["b/2", "a/1", "b/1", "c", "a/2", "b/10"]
        for name in names:
            await client.upload(name, name.encode())
        code, page = await client.json("GET", "filelist", limit="4")
        self.assertEqual([f["path"] for f in page["files"]], ["a/1", "a/2", "b/1", "b/10"])
        self.assertEqual(page["next"], "b/10")
        code, page = await client.json("GET", "filelist", limit="4", after="b/10")
        self.assertEqual(([f["path"] for f in page["files"]], page["next"]), (["b/2", "c"], None))
        code, page = await client.json("GET", "filelist", prefix="b/")
        self.assertEqual([f["path"] for f in page["files"]], ["b/1", "b/10", "b/2"])
        self.assertEqual(set(page["files"][0]), {"path", "size", "modified", "etag", "contentType"})
        code, body = await client.json("GET", "filelist", limit="0")
        self.assertEqual((code, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_content_type_stored_or_guessed(self):
        """An upload's Content-Type is stored; without one it is guessed from the extension."""
        client = await self.start()
        await client.upload("x.bin", b"x", headers={"content-type": "application/x-thing"})
        await client.upload("y.css", b"y")
        response, _ = await client.get("x.bin")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/x-thing"])
        response, _ = await client.get("y.css")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/css"])

    @asynctest
    async def test_bad_digest_stores_nothing(self):
        """A Content-MD5 mismatch gets BadDigest and no version or change appears."""
        client = await self.start()
        wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        code, body = await client.json("PUT", "uploadfile", data=b"data", path="d.txt",
                                       headers={"content-md5": wrong})
        self.assertEqual((code, body["error"]["code"]), (400, "BadDigest"))
        right = base64.b64encode(hashlib.md5(b"data").digest()).decode()
        await client.upload("e.txt", b"data", headers={"content-md5": right})
        code, listing = await client.json("GET", "filelist")
        self.assertEqual([f["path"] for f in listing["files"]], ["e.txt"])
        code, sync = await client.json("GET", "syncnext", after="0", limit="10")
        self.assertEqual(sync["last"], 1)

    @asynctest
    async def test_invalid_paths(self):
        """Paths with . or .. segments, control characters or over 1024 bytes get InvalidPath."""
        client = await self.start()
        for path in ("a/../b", "./a", "a/.", "a\x01b", "x" * 1025, "", "/"):
            code, body = await client.json("PUT", "uploadfile", data=b"x", path=path)
            self.assertEqual((code, body["error"]["code"]), (400, "InvalidPath"), repr(path))
        code, body = await client.json("GET", "getfile", path="a/../b")
        self.assertEqual((code, body["error"]["code"]), (400, "InvalidPath"))
        code, listing = await client.json("GET", "filelist")
        self.assertEqual(listing["files"], [])

    @asynctest
    async def test_disconnect_mid_upload_leaves_nothing(self):
        """A client that disconnects mid-upload leaves no version, no change and no spool file."""
        client = await self.start()
        conn = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.daemon.ports[0]), protocol.Protocol())
        lost = defer.Deferred()
        conn.connectionLost = lambda reason: lost.callback(None)
        conn.transport.write(
            b"PUT /uploadfile?sid=files&path=partial.bin HTTP/1.1\r\nHost: x\r\n"
            b"x-owncdn-key: " + KEY.encode() + b"\r\nContent-Length: 10000000\r\n\r\n"
            + b"x" * 3_000_000)
        conn.transport.loseConnection()
        await lost
        # Any request after the disconnect is handled after the server saw it.
        code, listing = await client.json("GET", "filelist")
        self.assertEqual(listing["files"], [])
        code, sync = await client.json("GET", "syncnext", after="0")
        self.assertEqual(sync["last"], 0)
        self.assertEqual(os.listdir(self.data_dir / "spool"), [])


class CrashSafetyTests(TestCase):
    timeout = 180

    async def start(self, data_dir: Path):
        self.daemon = await start_daemon(self, data_dir)
        return Client(self.daemon.url)

    def integrity(self, data_dir: Path) -> str:
        with sqlite3.connect(data_dir / "files.db") as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]

    @asynctest
    async def test_sigkill_during_burst_keeps_every_acknowledged_upload(self):
        """After SIGKILL mid-burst, every acknowledged upload is there byte for byte, nothing partial."""
        data_dir = Path(self.mktemp())
        write_config(data_dir)
        client = await self.start(data_dir)
        rng = random.Random(11)
        contents = {f"burst/{i:03d}.bin": rng.randbytes(rng.choice([100, 50_000, 1_500_000]))
                    for i in range(60)}
        acknowledged: dict[str, bytes] = {}
        enough = defer.Deferred()

        async def upload(path, data):
            code, body = await client.json("PUT", "uploadfile", data=data, path=path)
            if code == 200:
                acknowledged[path] = data
                if len(acknowledged) == 20 and not enough.called:
                    enough.callback(None)

        uploads = [defer.ensureDeferred(upload(p, d)) for p, d in contents.items()]
        await enough
        await kill_hard(self.daemon)
        await defer.DeferredList(uploads, consumeErrors=True)
        self.assertGreaterEqual(len(acknowledged), 20)
        client = await self.start(data_dir)
        code, listing = await client.json("GET", "filelist")
        listed = {f["path"]: f["size"] for f in listing["files"]}
        for path in acknowledged:
            self.assertIn(path, listed)
        for path in listed:
            response, body = await client.get(path)
            self.assertEqual(body, contents[path], path)
        await self.daemon.stop()
        self.assertEqual(self.integrity(data_dir), "ok")

    @asynctest
    async def test_sigkill_during_large_upload_leaves_no_partial_file(self):
        """A large upload cut by SIGKILL leaves no file, and the database is intact."""
        data_dir = Path(self.mktemp())
        write_config(data_dir)
        client = await self.start(data_dir)
        await client.upload("before.txt", b"kept")
        conn = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.daemon.ports[0]), protocol.Protocol())
        conn.transport.write(
            b"PUT /uploadfile?sid=files&path=huge.bin HTTP/1.1\r\nHost: x\r\n"
            b"x-owncdn-key: " + KEY.encode() + b"\r\nContent-Length: 50000000\r\n\r\n")
        conn.transport.write(os.urandom(20_000_000))
        await kill_hard(self.daemon)
        conn.transport.abortConnection()
        client = await self.start(data_dir)
        code, listing = await client.json("GET", "filelist")
        self.assertEqual([f["path"] for f in listing["files"]], ["before.txt"])
        await self.daemon.stop()
        self.assertEqual(self.integrity(data_dir), "ok")
