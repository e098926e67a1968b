"""
Tests for public bindings (L{owncdn.web.public}): matching, what is
asked of the source, and the response headers a CDN client sees.

The dispatcher runs in memory under L{treq.testing.StubTreq}; sources
are in-memory doubles.
"""

import io
from pathlib import Path

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

from owncdn.config import parse
from owncdn.errors import SourceError
from owncdn.registry import ServiceRegistry
from owncdn.services.cachepolicy import CacheRules
from owncdn.services.memorycache import MemoryCache
from owncdn.state import DaemonState
from owncdn.testing import MemoryFiles
from owncdn.web.dispatcher import Dispatcher
from tests.test_memorycache import CountingSource

CSS = b"body { color: #333; margin: 0 auto; }\n" * 100


class PublicTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.files = MemoryFiles(self.clock)
        self.source = CountingSource(self.files)

    def serve(self, *bindings, services=None):
        """
        A dispatcher with the given public services over C{files}.
        """
        raw = {"services": [{"id": "api", "type": "api"},
                            {"id": "files", "type": "storage"},
                            *bindings]}
        registry = ServiceRegistry()
        registry.add("files", self.source)
        for sid, service in (services or {}).items():
            raw["services"].append({"id": sid, "type": "filesystem", "directory": "/x"})
            registry.add(sid, service)
        state = DaemonState(Path(self.mktemp()), parse(raw), registry, clock=self.clock)
        self.stub = StubTreq(Dispatcher(state))

    def put(self, path, data, **kwargs):
        return self.successResultOf(self.files.put(path, io.BytesIO(data), **kwargs))

    def request(self, method, url, headers=None):
        d = self.stub.request(method, "http://cdn.example:8080" + url if url.startswith("/")
                              else url, headers=headers or {})
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response, body

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


def binding(**fields):
    return dict({"id": "www", "type": "public", "source": "files"}, **fields)


class PathTests(PublicTestCase):
    def test_prefix_and_source_path(self):
        """pathPrefix is removed and sourcePath put in front on the way to the source."""
        self.serve(binding(pathPrefix="/static/", sourcePath="assets/v2"))
        self.put("assets/v2/css/site.css", CSS, content_type="text/css")
        response, body = self.request("GET", "/static/css/site.css")
        self.assertEqual((response.code, body), (200, CSS))
        self.assertEqual(self.source.gets, [("assets/v2/css/site.css", "")])

    def test_prefix_without_slash(self):
        """A prefix matches whole segments: /static does not match /staticfoo."""
        self.serve(binding(pathPrefix="/static"))
        self.put("a", b"x")
        self.assertEqual(self.request("GET", "/static/a")[0].code, 200)
        self.assertEqual(self.request("GET", "/statica")[0].code, 404)
        self.assertEqual(self.source.gets, [("a", "")])

    def test_query_passed(self):
        """The query reaches the source as the query argument, not as part of the path."""
        self.serve(binding())
        self.put("img.jpg", b"jpeg")
        response, _ = self.request("GET", "/img.jpg?w=100&h=50")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.source.gets, [("img.jpg", "w=100&h=50")])

    def test_remove_query(self):
        """removeQuery drops the query before the source sees it."""
        self.serve(binding(removeQuery=True))
        self.put("a.js", b"1;")
        self.request("GET", "/a.js?v=123")
        self.assertEqual(self.source.gets, [("a.js", "")])

    def test_append_webp(self):
        """appendWebp adds webp=1 when Accept names image/webp, else webp=0, and says Vary: Accept."""
        self.serve(binding(appendWebp=True))
        self.put("a.jpg", b"jpeg")
        response, _ = self.request("GET", "/a.jpg?w=10", {"Accept": "image/avif,image/webp,*/*"})
        self.request("GET", "/a.jpg")
        self.assertEqual(self.source.gets, [("a.jpg", "w=10&webp=1"), ("a.jpg", "webp=0")])
        self.assertIn(b"Accept", response.headers.getRawHeaders(b"vary"))

    def test_encoded_path(self):
        """Percent-encoded paths are decoded once: spaces and UTF-8 reach the source."""
        self.serve(binding())
        self.put("my file/\u00e9.txt", b"x")
        self.assertEqual(self.request("GET", "/my%20file/%C3%A9.txt")[0].code, 200)

    def test_hostile_paths(self):
        """Dot segments, encoded or not, and bad UTF-8 are refused with 400 before the source."""
        self.serve(binding(pathPrefix="/static/"))
        for url in ("/static/%2e%2e/secret", "/static/a/%2E%2E/%2e%2e/x", "/static/%ff",
                    "/static/a%00b"):
            response, body = self.request("GET", url)
            self.assertEqual(response.code, 400, url)
            self.assertIn(b"InvalidPath", body)
        self.assertEqual(self.source.gets, [])

    def test_root_is_not_a_file(self):
        """The binding's root is 404, not an error."""
        self.serve(binding(pathPrefix="/static/"))
        self.assertEqual(self.request("GET", "/static/")[0].code, 404)


class ResponseTests(PublicTestCase):
    def setUp(self):
        super().setUp()
        self.info = self.put("site.css", CSS, content_type="text/css")

    def test_headers(self):
        """A file comes with its type, length, ETag, Last-Modified and Cache-Control."""
        self.serve(binding(clientCacheSeconds=3600))
        response, body = self.request("GET", "/site.css")
        self.assertEqual(body, CSS)
        self.assertEqual(self.header(response, b"content-type"), b"text/css")
        self.assertEqual(response.length, len(CSS))
        self.assertEqual(self.header(response, b"etag"), b'"%s"' % self.info.etag.encode())
        self.assertIsNotNone(self.header(response, b"last-modified"))
        self.assertEqual(self.header(response, b"cache-control"), b"public, max-age=3600")

    def test_no_cache_control_by_default(self):
        """Without clientCacheSeconds no Cache-Control is sent."""
        self.serve(binding())
        self.assertIsNone(self.header(self.request("GET", "/site.css")[0], b"cache-control"))

    def test_range(self):
        """A single Range gets 206 with the bytes asked for."""
        self.serve(binding())
        response, body = self.request("GET", "/site.css", {"Range": "bytes=5-9"})
        self.assertEqual((response.code, body), (206, CSS[5:10]))
        self.assertEqual(self.header(response, b"content-range"), b"bytes 5-9/%d" % len(CSS))

    def test_conditional(self):
        """If-None-Match with the ETag gets 304."""
        self.serve(binding())
        response, body = self.request("GET", "/site.css",
                                      {"If-None-Match": f'"{self.info.etag}"'})
        self.assertEqual((response.code, body), (304, b""))

    def test_brotli(self):
        """A client accepting br gets the stored Brotli bytes as Content-Encoding: br."""
        self.serve(binding())
        response, _ = self.request("GET", "/site.css", {"Accept-Encoding": "gzip, br"})
        self.assertEqual(self.header(response, b"content-encoding"), b"br")
        self.assertIn(b"Accept-Encoding", response.headers.getRawHeaders(b"vary"))

    def test_head(self):
        """HEAD answers the headers without the body."""
        self.serve(binding())
        response, body = self.request("HEAD", "/site.css")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, b"content-length"), b"%d" % len(CSS))

    def test_missing(self):
        """A file the source lacks is 404."""
        self.serve(binding())
        response, body = self.request("GET", "/nope")
        self.assertEqual((response.code, body), (404, b"404 NoSuchFile\n"))

    def test_source_error(self):
        """A failing source is 502."""
        self.serve(binding())
        self.source.get = lambda path, version=None, query="": fail(SourceError("down"))
        self.assertEqual(self.request("GET", "/site.css")[0].code, 502)

    def test_write_methods_refused(self):
        """Anything but GET and HEAD is 405 with Allow."""
        self.serve(binding())
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            response, _ = self.request(method, "/site.css")
            self.assertEqual(response.code, 405)
            self.assertEqual(self.header(response, b"allow"), b"GET, HEAD")

    def test_cors(self):
        """With cors on, OPTIONS is a preflight answer and GETs allow any origin."""
        self.serve(binding(cors=True))
        response, _ = self.request("OPTIONS", "/site.css",
                                   {"Access-Control-Request-Method": "GET"})
        self.assertEqual(response.code, 204)
        self.assertEqual(self.header(response, b"access-control-allow-methods"),
                         b"GET, HEAD, OPTIONS")
        response, _ = self.request("GET", "/site.css", {"Origin": "https://example.com"})
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"*")


class MatchingTests(PublicTestCase):
    def setUp(self):
        super().setUp()
        self.put("a", b"files")
        self.other = MemoryFiles(self.clock)
        self.successResultOf(self.other.put("a", io.BytesIO(b"other")))

    def test_first_match_wins(self):
        """Bindings are tried in configured order; host, port and prefix must all match."""
        self.serve(
            binding(id="img", host="img.example", source="other"),
            binding(id="alt", port=9999, source="other"),
            binding(id="www"),
            services={"other": self.other},
        )
        self.assertEqual(self.request("GET", "http://img.example:8080/a")[1], b"other")
        self.assertEqual(self.request("GET", "http://IMG.example:8080/a")[1], b"other")
        self.assertEqual(self.request("GET", "http://cdn.example:8080/a")[1], b"files")
        self.assertEqual(self.request("GET", "http://cdn.example:9999/a")[1], b"other")

    def test_no_binding(self):
        """A request no binding matches is 404."""
        self.serve(binding(host="img.example"))
        self.assertEqual(self.request("GET", "/a")[0].code, 404)


class CacheHitTests(PublicTestCase):
    def test_hit_through_binding(self):
        """A public GET of a memory-cached file answers without asking the source again."""
        cache = MemoryCache(self.source, CacheRules(), max_item_size=1 << 20,
                            max_memory=1 << 24, clock=self.clock)
        self.put("a.txt", b"k" * 1024)
        self.serve(binding(source="hot"), services={"hot": cache})
        for _ in range(3):
            response, body = self.request("GET", "/a.txt")
            self.assertEqual((response.code, body), (200, b"k" * 1024))
        self.assertEqual(self.source.gets, [("a.txt", "")])
        self.assertEqual(cache.stats()["hits"], 2)

    def test_hits_answer_like_the_source(self):
        """A memory-cache hit through a binding (GET, HEAD, a range, a conditional GET) has
        the headers and status the first answer had."""
        cache = MemoryCache(self.source, CacheRules(), max_item_size=1 << 20,
                            max_memory=1 << 24, clock=self.clock)
        self.put("a.css", CSS, content_type="text/css")
        self.serve(binding(source="hot"), services={"hot": cache})
        first, _ = self.request("GET", "/a.css")
        self.assertEqual(cache.stats()["misses"], 1)
        response, body = self.request("GET", "/a.css")
        self.assertEqual((response.code, body), (200, CSS))
        for name in (b"etag", b"last-modified", b"content-type", b"content-length",
                     b"accept-ranges"):
            self.assertEqual(self.header(response, name), self.header(first, name), name)
        response, body = self.request("HEAD", "/a.css")
        self.assertEqual((response.code, body, self.header(response, b"content-length")),
                         (200, b"", b"%d" % len(CSS)))
        response, body = self.request("GET", "/a.css", headers={b"range": [b"bytes=5-9"]})
        self.assertEqual((response.code, body), (206, CSS[5:10]))
        etag = self.header(first, b"etag")
        response, body = self.request("GET", "/a.css", headers={b"if-none-match": [etag]})
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(self.source.gets, [("a.css", "")])
        self.assertEqual(cache.stats()["hits"], 4)

    def test_stale_hit_revalidated(self):
        """A held item past its refresh time is not served as a hit: the source is asked."""
        cache = MemoryCache(self.source, CacheRules(refresh=60.0), max_item_size=1 << 20,
                            max_memory=1 << 24, clock=self.clock)
        self.put("a.txt", b"one")
        self.serve(binding(source="hot"), services={"hot": cache})
        self.request("GET", "/a.txt")
        self.put("a.txt", b"two")
        self.assertEqual(self.request("GET", "/a.txt")[1], b"one")
        self.clock.advance(60)
        self.assertEqual(self.request("GET", "/a.txt")[1], b"two")
        self.assertEqual(len(self.source.gets), 2)
