"""
Whole chains over real sockets: a client, a public binding or standard
mode, a memory cache, an HTTP fetcher, and an origin web server that
runs in the test process on 127.0.0.1 and counts what it is asked.

L{DaemonChainTests} run the real daemon (C{twistd -n owncdn});
L{InProcessChainTests} build the same chain in this process so the
cache's time can be a L{Clock} (refresh, remembered 404s) while the
network stays real.
"""

import base64
import hashlib
from collections import Counter
from pathlib import Path

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from owncdn.services.cachepolicy import CacheRules
from owncdn.services.httpfetcher import HTTPFetcher
from owncdn.services.memorycache import MemoryCache
from tests.daemon import eventually, start_daemon, write_config
from tests.util import asynctest
from tests.webserver import WRITER, WebFront, base_config

WAIT = 20
MiB = 1024 * 1024


class Tracked:
    """
    A listening port whose connections are all closed by L{close}, so
    a test leaves no socket behind whatever its peer does.
    """

    def __init__(self, factory):
        self.factory = WrappingFactory(factory)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def close(self):
        await self.port.stopListening()
        for wrapper in list(self.factory.protocols):
            wrapper.transport.abortConnection()
        await eventually(lambda: not self.factory.protocols, timeout=WAIT)


class Origin(Resource):
    """
    The origin web server: C{files} maps a path to its bytes (ETag: MD5);
    paths in C{holding} send a third of their body and wait for
    L{release}.  C{requests}, C{heads} (the C{HEAD} requests among
    them) and C{not_modified} count per path.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.holding: set[str] = set()
        self.held: list = []
        self.requests: Counter = Counter()
        self.heads: Counter = Counter()
        self.not_modified: Counter = Counter()

    def render_GET(self, request):
        path = request.path.decode()
        self.requests[path] += 1
        if request.method == b"HEAD":
            self.heads[path] += 1
        data = self.files.get(path)
        if data is None:
            request.setResponseCode(404)
            return b"not found"
        etag = b'"%s"' % hashlib.md5(data).hexdigest().encode()
        request.setHeader(b"etag", etag)
        request.setHeader(b"content-type", b"text/plain")
        if request.getHeader(b"if-none-match") == etag:
            self.not_modified[path] += 1
            request.setResponseCode(304)
            return b""
        if path in self.holding:
            request.setHeader(b"content-length", b"%d" % len(data))
            request.write(data[:len(data) // 3])
            self.held.append((request, data))
            return NOT_DONE_YET
        return data

    def release(self):
        held, self.held = self.held, []
        for request, data in held:
            request.write(data[len(data) // 3:])
            request.finish()


class BrokenOrigin(protocol.Protocol):
    """
    An origin that misbehaves by path: C{/long} sends more than its
    Content-Length, C{/short} and C{/big-short} close early, C{/hang}
    never answers.
    """

    counts: Counter

    def dataReceived(self, data):
        if b"\r\n\r\n" not in data:
            return
        path = data.split(b" ")[1].decode()
        self.counts[path] += 1
        if path == "/long":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
        elif path == "/short":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello")
            self.transport.loseConnection()
        elif path == "/big-short":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (3 * MiB))
            self.transport.write(b"x" * (2 * MiB))
            self.transport.loseConnection()


async def start_origin(testcase, resource) -> Tracked:
    server = Tracked(Site(resource))
    testcase.addCleanup(server.close)
    return server


async def get(url, headers=None, **kwargs):
    response = await treq.get(url, headers=headers or {}, persistent=False, timeout=WAIT,
                              **kwargs)
    return response, await treq.content(response)


async def call(base, method, function, headers=None, **kwargs):
    headers = dict(headers or {}, **{"x-owncdn-key": WRITER})
    return await treq.request(method, f"{base}/{function}", headers=headers,
                              persistent=False, timeout=WAIT, **kwargs)


class DaemonChainTests(TestCase):
    timeout = 60

    async def start(self, services):
        data_dir = Path(self.mktemp()).absolute()
        write_config(data_dir, services=[{"id": "api", "type": "api"}] + services)
        self.daemon = await start_daemon(self, data_dir)
        return self.daemon.url

    async def cached_chain(self, **cache):
        self.origin = Origin()
        origin = await start_origin(self, self.origin)
        return await self.start([
            {"id": "origin", "type": "httpfetcher", "sourceUrl": origin.url + "/static/",
             "cacheNotFound": 60},
            dict({"id": "hot", "type": "memorycache", "source": "origin",
                  "expireNotFound": 60}, **cache),
            {"id": "www", "type": "public", "pathPrefix": "/", "source": "hot",
             "clientCacheSeconds": 600},
        ])

    @asynctest
    async def test_hits_skip_the_origin(self):
        """Through public -> memorycache -> httpfetcher, repeated GETs reach the origin once, headers intact."""
        url = await self.cached_chain()
        data = b"body { color: red }\n" * 50
        self.origin.files["/static/css/site.css"] = data
        for _ in range(3):
            response, body = await get(url + "/css/site.css")
            self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.origin.requests["/static/css/site.css"], 1)
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        self.assertEqual(response.headers.getRawHeaders("etag"), [etag])
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/plain"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"),
                         ["public, max-age=600"])
        response, body = await get(url + "/css/site.css", {"Range": "bytes=0-3"})
        self.assertEqual((response.code, body), (206, data[:4]))
        response, body = await get(url + "/css/site.css", {"If-None-Match": etag})
        self.assertEqual((response.code, body), (304, b""))
        for _ in range(2):
            response, _ = await get(url + "/missing.css")
            self.assertEqual(response.code, 404)
        self.assertEqual(self.origin.requests["/static/missing.css"], 1)
        self.assertEqual(sum(self.origin.requests.values()), 2)

    @asynctest
    async def test_concurrent_misses_one_origin_request(self):
        """A hundred concurrent GETs of an uncached file make one origin request."""
        url = await self.cached_chain()
        data = bytes(range(256)) * (6 * 1024)
        self.origin.files["/static/video.bin"] = data
        self.origin.holding.add("/static/video.bin")
        pending = [treq.get(url + "/video.bin", persistent=False, unbuffered=True)
                   for _ in range(100)]
        # Every response has begun while the origin still holds most of
        # the body: all hundred are served by the one fetch in progress.
        responses = await defer.gatherResults(pending).addTimeout(WAIT, reactor)
        self.assertEqual(self.origin.requests["/static/video.bin"], 1)
        self.origin.release()
        bodies = await defer.gatherResults(
            [treq.content(r) for r in responses]).addTimeout(WAIT, reactor)
        self.assertEqual({hashlib.md5(b).hexdigest() for b in bodies},
                         {hashlib.md5(data).hexdigest()})
        self.assertEqual(self.origin.requests["/static/video.bin"], 1)

    @asynctest
    async def test_standard_mode_on_the_chain(self):
        """Standard mode reaches cache and fetcher: getfile, filelist and flush on the cache, getfile on the fetcher."""
        url = await self.cached_chain()
        self.origin.files["/static/a.txt"] = b"alpha"
        await get(url + "/a.txt?v=1")
        response = await call(url, "GET", "getfile?sid=hot&path=a.txt")
        self.assertEqual((response.code, await response.content()), (200, b"alpha"))
        listing = await (await call(url, "GET", "filelist?sid=hot")).json()
        self.assertEqual([f["path"] for f in listing["files"]], ["a.txt", "a.txt?v=1"])
        self.assertEqual(self.origin.requests["/static/a.txt"], 2)
        response = await call(url, "POST", "flush?sid=hot")
        self.assertEqual(await response.json(), {"flushed": 2})
        await get(url + "/a.txt")
        self.assertEqual(self.origin.requests["/static/a.txt"], 3)
        response = await call(url, "GET", "getfile?sid=origin&path=a.txt")
        self.assertEqual((response.code, await response.content()), (200, b"alpha"))
        self.assertEqual(self.origin.requests["/static/a.txt"], 4)
        response = await call(url, "GET", "filelist?sid=origin")
        self.assertEqual((response.code, (await response.json())["error"]["code"]),
                         (400, "NotSupported"))
        response = await call(url, "POST", "flush?sid=origin")
        self.assertEqual((response.code, (await response.json())["error"]["code"]),
                         (400, "NotSupported"))

    @asynctest
    async def test_filesystem_chain(self):
        """Files uploaded through standard mode into a filesystem service are served by a public binding."""
        directory = Path(self.mktemp()).absolute()
        url = await self.start([
            {"id": "disk", "type": "filesystem", "directory": str(directory)},
            {"id": "www", "type": "public", "pathPrefix": "/files/", "source": "disk"},
        ])
        data = b"<h1>hello</h1>"
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        response = await call(url, "PUT", "uploadfile?sid=disk&path=site/index.html", data=data,
                              headers={"content-md5": md5})
        uploaded = await response.json()
        self.assertEqual((response.code, uploaded["etag"], uploaded["size"]),
                         (200, hashlib.md5(data).hexdigest(), len(data)))
        self.assertEqual((directory / "site" / "index.html").read_bytes(), data)
        response, body = await get(url + "/files/site/index.html")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(response.headers.getRawHeaders("etag"), [f'"{uploaded["etag"]}"'])
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html"])
        listing = await (await call(url, "GET", "filelist?sid=disk")).json()
        self.assertEqual([f["path"] for f in listing["files"]], ["site/index.html"])
        response = await call(url, "PUT", "uploadfile?sid=disk&path=bad", data=b"other",
                              headers={"content-md5": md5})
        self.assertEqual((await response.json())["error"]["code"], "BadDigest")
        self.assertFalse((directory / "bad").exists())
        for path in ("../escape", "%2e%2e/escape"):
            response = await call(url, "PUT", f"uploadfile?sid=disk&path={path}", data=b"x")
            self.assertEqual((await response.json())["error"]["code"], "InvalidPath")
        self.assertFalse((directory.parent / "escape").exists())
        response, _ = await get(url + "/files/%2e%2e/owncdn.json")
        self.assertEqual(response.code, 400)
        response = await call(url, "DELETE", "deletefile?sid=disk&path=site/index.html")
        self.assertEqual((await response.json())["deleted"], True)
        response, _ = await get(url + "/files/site/index.html")
        self.assertEqual(response.code, 404)

    @asynctest
    async def test_broken_origins(self):
        """An overlong or short origin body aborts the client's response and is never cached; a hanging origin times out to a remembered 502."""
        BrokenOrigin.counts = Counter()
        broken = Tracked(protocol.Factory.forProtocol(BrokenOrigin))
        self.addCleanup(broken.close)
        url = await self.start([
            {"id": "origin", "type": "httpfetcher", "sourceUrl": broken.url + "/",
             "timeout": 0.5, "cacheErrors": 60},
            {"id": "hot", "type": "memorycache", "source": "origin"},
            {"id": "www", "type": "public", "pathPrefix": "/", "source": "hot"},
        ])
        for path in ("/long", "/short"):
            for attempt in (1, 2):
                # Small: the failure is known before the first byte is sent.
                response, body = await get(url + path)
                self.assertEqual((response.code, body), (502, b"502 SourceError\n"))
                self.assertEqual(BrokenOrigin.counts[path], attempt, path)
        for attempt in (1, 2):
            response = await treq.get(url + "/big-short", persistent=False, timeout=WAIT)
            self.assertEqual(response.code, 200)
            with self.assertRaises(ResponseFailed):
                await treq.content(response)
            self.assertEqual(BrokenOrigin.counts["/big-short"], attempt)
        response, body = await get(url + "/hang")
        self.assertEqual((response.code, body), (502, b"502 SourceError\n"))
        response, _ = await get(url + "/hang")
        self.assertEqual(response.code, 502)
        self.assertEqual(BrokenOrigin.counts["/hang"], 1)


class InProcessChainTests(TestCase):
    """
    public -> memorycache (on a Clock) -> httpfetcher -> origin, in this
    process, over real sockets.
    """

    timeout = 30

    async def chain(self, **rules):
        self.origin = Origin()
        origin = await start_origin(self, self.origin)
        self.clock = Clock()
        fetcher = HTTPFetcher(origin.url + "/", reactor=reactor, timeout=5)
        self.addCleanup(fetcher.stopService)
        self.cache = MemoryCache(fetcher, CacheRules(**rules), max_item_size=MiB,
                                 max_memory=16 * MiB,
                                 clock=self.clock)
        raw = base_config(services=[
            {"id": "origin", "type": "httpfetcher", "sourceUrl": origin.url + "/"},
            {"id": "hot", "type": "memorycache", "source": "origin"},
            {"id": "www", "type": "public", "source": "hot"},
        ])
        self.front = WebFront(self, raw, {"origin": fetcher, "hot": self.cache})
        return self.front.url

    @asynctest
    async def test_refresh_revalidates(self):
        """Past refresh, a request makes a conditional origin request; 304 keeps the copy, a change replaces it."""
        url = await self.chain(refresh=300.0)
        self.origin.files["/a.txt"] = b"one"
        self.assertEqual((await get(url + "/a.txt"))[1], b"one")
        self.clock.advance(300)
        self.assertEqual((await get(url + "/a.txt"))[1], b"one")
        self.assertEqual((self.origin.requests["/a.txt"], self.origin.not_modified["/a.txt"]),
                         (2, 1))
        self.origin.files["/a.txt"] = b"two"
        self.assertEqual((await get(url + "/a.txt"))[1], b"one")
        self.clock.advance(300)
        self.assertEqual((await get(url + "/a.txt"))[1], b"two")
        self.assertEqual((await get(url + "/a.txt"))[1], b"two")
        self.assertEqual(self.origin.requests["/a.txt"], 3)

    @asynctest
    async def test_not_found_remembered(self):
        """A 404 is remembered for expireNotFound: the origin is not asked again until then."""
        url = await self.chain(expire_not_found=60.0)
        for _ in range(3):
            self.assertEqual((await get(url + "/late.txt"))[0].code, 404)
        self.origin.files["/late.txt"] = b"here now"
        self.clock.advance(59)
        self.assertEqual((await get(url + "/late.txt"))[0].code, 404)
        self.assertEqual(self.origin.requests["/late.txt"], 1)
        self.clock.advance(1)
        self.assertEqual((await get(url + "/late.txt"))[1], b"here now")
        self.assertEqual(self.origin.requests["/late.txt"], 2)

    @asynctest
    async def test_eviction_under_max_memory(self):
        """Filling past maxMemory evicts the least recently used files and keeps the total under it."""
        url = await self.chain()
        self.cache.max_memory = 64 * 1024
        for index in range(40):
            self.origin.files[f"/f{index}"] = bytes([index]) * 4000
            self.assertEqual((await get(url + f"/f{index}"))[1], bytes([index]) * 4000)
            self.assertLessEqual(self.cache.stats()["bytes"], 64 * 1024)
        stats = self.cache.stats()
        self.assertGreater(stats["evictions"], 0)
        await get(url + "/f39")
        await get(url + "/f0")
        self.assertEqual((self.origin.requests["/f39"], self.origin.requests["/f0"]), (1, 2))

    @asynctest
    async def test_head_asks_the_origin_head(self):
        """A HEAD on an uncached item is a HEAD to the origin: right headers and Content-Length, nothing downloaded or cached; after a GET it is a hit."""
        url = await self.chain()
        big = bytes(range(256)) * (12 * 1024)
        self.origin.files["/big.bin"] = big
        self.origin.files["/site.css"] = b"body { color: red }\n" * 40
        response = await treq.head(url + "/big.bin", persistent=False, timeout=WAIT)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-length"), [str(len(big))])
        self.assertEqual(response.headers.getRawHeaders("etag"),
                         [f'"{hashlib.md5(big).hexdigest()}"'])
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/plain"])
        self.assertEqual(await treq.content(response), b"")
        self.assertEqual((self.origin.requests["/big.bin"], self.origin.heads["/big.bin"]), (1, 1))
        self.assertEqual(self.cache.stats()["items"], 0)

        response = await treq.head(url + "/site.css", persistent=False, timeout=WAIT)
        self.assertEqual(response.headers.getRawHeaders("content-length"), ["800"])
        self.assertEqual(self.cache.stats()["items"], 0)
        self.assertEqual((await get(url + "/site.css"))[1], self.origin.files["/site.css"])
        response = await treq.head(url + "/site.css", persistent=False, timeout=WAIT)
        self.assertEqual((response.code, response.headers.getRawHeaders("content-length")),
                         (200, ["800"]))
        self.assertEqual((self.origin.requests["/site.css"], self.origin.heads["/site.css"]),
                         (2, 1))
        response = await treq.head(url + "/missing", persistent=False, timeout=WAIT)
        self.assertEqual(response.code, 404)
        self.assertEqual(self.origin.heads["/missing"], 1)
