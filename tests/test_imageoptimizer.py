"""
Tests for L{owncdn.services.imageoptimizer}: query parameters, the
geometry of resizing and cropping, the formats served, what passes
through untouched, and the inputs that are refused (a file that is not
what its content type says, a decompression bomb, hostile parameters).

Images are made with Pillow in the test.  The thread pool runs jobs
inline; the public binding runs in memory under L{StubTreq}.
"""

import io
import struct
import time
import zlib
from pathlib import Path

from PIL import Image, ImageFile
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq
from zope.interface import implementer
from zope.interface.verify import verifyObject

from owncdn.config import parse
from owncdn.errors import InvalidParameter
from owncdn.interfaces import FileInfo, IFileBody, IReadableFiles
from owncdn.registry import ServiceContext, ServiceRegistry
from owncdn.services import imageoptimizer
from owncdn.services.imageoptimizer import (
    MAX_INPUT_BYTES,
    ImageOptimizer,
    ImageRequest,
    InvalidImage,
    output_geometry,
    parse_query,
)
from owncdn.state import DaemonState
from owncdn.testing import InlineThreadPool, MemoryFiles, ThreadlessClock
from owncdn.web.dispatcher import Dispatcher
from tests.util import read_all
from tests.test_memorycache import CountingSource

HOSTILE_QUERIES = [
    "w=abc", "w=0", "w=-1", "w=100000", "w=16384", "w=1e3", "w=1.5", "w=", "w=%00",
    "w=%EF%BC%91", "w=1&w=2", "h=0", "h=99999999999999999999", "c=2", "webp=yes",
    "webp=", "&".join(f"p{n}=1" for n in range(101)),
]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo(width: int = 800, height: int = 600) -> Image.Image:
    """
    A photo-like RGB image: smooth gradients that JPEG keeps well.
    """
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90)
                               .resize((width, height)), Image.new("L", (width, height), 90)))


def stripes(width: int, height: int) -> Image.Image:
    """
    Red, green and blue vertical thirds: a crop to the middle is green.
    """
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 255, 0), (width // 3, 0, 2 * width // 3, height))
    image.paste((0, 0, 255), (2 * width // 3, 0, width, height))
    return image


def png_bomb(width: int, height: int) -> bytes:
    """
    A valid 1-bit PNG of C{width} x C{height} white pixels, a few KB on
    disk, made without holding the image in memory.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class QueryTests(SynchronousTestCase):
    def test_parameters(self):
        """w, h, c and webp are read; other parameters are ignored."""
        self.assertEqual(parse_query("w=100&h=50&c=1&webp=1&v=3"),
                         ImageRequest(100, 50, True, True))
        self.assertEqual(parse_query(""), ImageRequest())
        self.assertEqual(parse_query("webp=0&c=0"), ImageRequest())
        self.assertEqual(parse_query("w=16383"), ImageRequest(width=16383))

    def test_hostile_parameters(self):
        """Sizes that are not whole numbers from 1 to 16383, repeated parameters, flags other than 0/1 and floods are InvalidParameter."""
        for query in HOSTILE_QUERIES:
            self.assertRaises(InvalidParameter, parse_query, query)


class GeometryTests(SynchronousTestCase):
    def test_fit(self):
        """Without cropping the image is scaled to fit w and h, keeping its proportions."""
        self.assertEqual(output_geometry((800, 600), ImageRequest(width=100), 4096)[0], (100, 75))
        self.assertEqual(output_geometry((800, 600), ImageRequest(height=60), 4096)[0], (80, 60))
        self.assertEqual(output_geometry((800, 600), ImageRequest(100, 10), 4096)[0], (13, 10))

    def test_never_enlarged(self):
        """A request bigger than the image leaves its size alone."""
        self.assertEqual(output_geometry((800, 600), ImageRequest(2000, 2000), 4096),
                         ((800, 600), (0.0, 0.0, 800.0, 600.0)))

    def test_max_width(self):
        """maxWidth bounds the width whatever is asked, and applies without parameters."""
        self.assertEqual(output_geometry((800, 600), ImageRequest(), 400)[0], (400, 300))
        self.assertEqual(output_geometry((800, 600), ImageRequest(width=600), 400)[0],
                         (400, 300))

    def test_crop_to_the_middle(self):
        """c=1 with w and h covers the box and keeps its middle."""
        out, box = output_geometry((800, 600), ImageRequest(100, 100, crop=True), 4096)
        self.assertEqual(out, (100, 100))
        self.assertEqual([round(v) for v in box], [100, 0, 700, 600])

    def test_crop_needs_both_sides(self):
        """c=1 with only w or h is a plain resize."""
        self.assertEqual(output_geometry((800, 600), ImageRequest(width=100, crop=True), 4096),
                         output_geometry((800, 600), ImageRequest(width=100), 4096))


@implementer(IFileBody)
class UnreadableBody:
    """
    A body that must not be read.
    """

    def __init__(self, info: FileInfo):
        self.info = info
        self.closed = False

    def read(self, offset, length):
        raise AssertionError("the body was read")

    def alternate(self, encoding):
        return None

    def close(self):
        self.closed = True


class OptimizerTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = ThreadlessClock()
        self.files = MemoryFiles(self.clock)
        self.source = CountingSource(self.files)
        self.pools: list[InlineThreadPool] = []
        self.optimizer = self.make_optimizer()

    def make_pool(self, minthreads, maxthreads, name):
        pool = InlineThreadPool(minthreads, maxthreads, name)
        self.pools.append(pool)
        return pool

    def make_optimizer(self, source=None, **options) -> ImageOptimizer:
        optimizer = ImageOptimizer(source or self.source, clock=self.clock,
                                   make_pool=self.make_pool, **options)
        optimizer.startService()
        self.addCleanup(optimizer.stopService)
        return optimizer

    def put(self, path, data, content_type):
        return self.successResultOf(self.files.put(path, io.BytesIO(data),
                                                   content_type=content_type))

    def fetch(self, path, query="", optimizer=None):
        body = self.successResultOf((optimizer or self.optimizer).get(path, query=query))
        return body, read_all(self, body)


class OptimizeTests(OptimizerTestCase):
    def test_interfaces(self):
        """The optimizer is a readable file service."""
        self.assertTrue(verifyObject(IReadableFiles, self.optimizer))

    def test_resize_jpeg(self):
        """w=100 on an 800x600 JPEG gives a 100x75 JPEG, in the thread pool, from the query-less source path."""
        self.put("img/photo.jpg", encode(photo(), "JPEG", quality=95), "image/jpeg")
        body, data = self.fetch("img/photo.jpg", "w=100&v=2")
        image = decoded(data)
        self.assertEqual((image.format, image.size), ("JPEG", (100, 75)))
        self.assertEqual((body.info.content_type, body.info.size), ("image/jpeg", len(data)))
        self.assertEqual(self.source.gets, [("img/photo.jpg", "")])
        self.assertEqual(self.pools[0].jobs, 1)

    def test_webp(self):
        """webp=1 gives WebP, typed image/webp."""
        self.put("photo.jpg", encode(photo(), "JPEG", quality=95), "image/jpeg")
        body, data = self.fetch("photo.jpg", "w=200&webp=1")
        image = decoded(data)
        self.assertEqual((image.format, image.size), ("WEBP", (200, 150)))
        self.assertEqual(body.info.content_type, "image/webp")

    def test_crop(self):
        """w, h and c=1 give exactly that size, cut from the middle of the image."""
        self.put("s.png", encode(stripes(900, 300), "PNG"), "image/png")
        _, data = self.fetch("s.png", "w=60&h=60&c=1")
        image = decoded(data).convert("RGB")
        self.assertEqual(image.size, (60, 60))
        self.assertEqual(image.getpixel((30, 30)), (0, 255, 0))
        self.assertEqual({image.getpixel((1, 30)), image.getpixel((58, 30))}, {(0, 255, 0)})

    def test_max_width(self):
        """No image is served wider than maxWidth."""
        optimizer = self.make_optimizer(max_width=300)
        self.put("photo.jpg", encode(photo(), "JPEG", quality=95), "image/jpeg")
        for query in ("", "w=500", "w=16383&h=16383"):
            self.assertEqual(decoded(self.fetch("photo.jpg", query, optimizer)[1]).size,
                             (300, 225))

    def test_transparency_kept(self):
        """A PNG with transparency stays a PNG with transparency."""
        image = Image.new("RGBA", (400, 400), (255, 0, 0, 0))
        image.paste((0, 0, 255, 255), (100, 100, 300, 300))
        self.put("logo.png", encode(image, "PNG"), "image/png")
        _, data = self.fetch("logo.png", "w=40")
        result = decoded(data)
        self.assertEqual((result.format, result.mode, result.size), ("PNG", "RGBA", (40, 40)))
        self.assertEqual(result.getpixel((0, 0))[3], 0)
        _, data = self.fetch("logo.png", "w=40&webp=1")
        self.assertEqual(decoded(data).mode, "RGBA")

    def test_exif_orientation(self):
        """A JPEG is turned the way its EXIF orientation says before it is resized."""
        exif = Image.Exif()
        exif[0x0112] = 6
        self.put("turned.jpg", encode(photo(800, 400), "JPEG", exif=exif), "image/jpeg")
        _, data = self.fetch("turned.jpg", "w=100")
        self.assertEqual(decoded(data).size, (100, 200))

    def test_still_gif_becomes_png(self):
        """A still GIF is re-encoded as PNG; an animated GIF is served as it is."""
        self.put("still.gif", encode(stripes(300, 300).convert("P"), "GIF"), "image/gif")
        body, data = self.fetch("still.gif", "w=30")
        self.assertEqual((decoded(data).format, body.info.content_type), ("PNG", "image/png"))
        frames = [stripes(100, 100), stripes(100, 100).rotate(90)]
        animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
        self.put("anim.gif", animated, "image/gif")
        body, data = self.fetch("anim.gif", "w=30")
        self.assertEqual((data, body.info.content_type), (animated, "image/gif"))

    def test_original_when_not_smaller(self):
        """At the same size, an image whose re-encoding is not smaller is served as the original; at another size the result is."""
        original = encode(Image.new("P", (64, 64)), "PNG", optimize=True)
        self.put("tiny.png", original, "image/png")
        body, data = self.fetch("tiny.png")
        self.assertEqual((data, body.info.content_type), (original, "image/png"))
        noise = Image.merge("RGB", [Image.effect_noise((400, 300), 80)] * 3)
        rough = encode(noise, "JPEG", quality=10, optimize=True)
        self.put("rough.jpg", rough, "image/jpeg")
        self.assertEqual(self.fetch("rough.jpg", "w=400")[1], rough)
        resized = decoded(self.fetch("rough.jpg", "w=399")[1])
        self.assertEqual(resized.size, (399, 299))

    def test_non_images_pass_through(self):
        """Content that is not a JPEG, PNG, GIF or WebP is the source's own body, untouched, Brotli form included."""
        css = b"body { color: red }\n" * 100
        info = self.put("site.css", css, "text/css")
        body, data = self.fetch("site.css", "w=100")
        self.assertEqual((data, body.info.etag), (css, info.etag))
        self.assertIsNotNone(body.alternate("br"))
        self.put("doc.svg", b"<svg/>", "image/svg+xml")
        self.assertEqual(self.fetch("doc.svg", "w=10")[1], b"<svg/>")

    def test_deterministic_etag(self):
        """The same request gives the same bytes and ETag; the ETag follows the source, the parameters and the settings."""
        self.put("photo.jpg", encode(photo(), "JPEG", quality=95), "image/jpeg")
        first, data = self.fetch("photo.jpg", "w=100")
        second, again = self.fetch("photo.jpg", "w=100&v=9")
        self.assertEqual((data, first.info.etag), (again, second.info.etag))
        etags = {first.info.etag,
                 self.fetch("photo.jpg", "w=101")[0].info.etag,
                 self.fetch("photo.jpg", "w=100&webp=1")[0].info.etag,
                 self.fetch("photo.jpg", "w=100", self.make_optimizer(quality=50))[0].info.etag}
        source_etag = self.successResultOf(self.files.get("photo.jpg")).info.etag
        self.put("photo.jpg", encode(photo(), "JPEG", quality=90), "image/jpeg")
        etags.add(self.fetch("photo.jpg", "w=100")[0].info.etag)
        self.assertEqual(len(etags), 5)
        self.assertNotIn(source_etag, etags)

    def test_source_path_and_version(self):
        """sourcePath is put in front of the path; a version is passed on to the source."""
        optimizer = self.make_optimizer(source_path="media")
        old = self.put("media/p.jpg", encode(photo(), "JPEG"), "image/jpeg")
        self.put("media/p.jpg", encode(photo(400, 400), "JPEG"), "image/jpeg")
        body = self.successResultOf(optimizer.get("p.jpg", old.version, "w=80"))
        self.assertEqual(decoded(read_all(self, body)).size, (80, 60))
        infos, _ = self.successResultOf(optimizer.list("", None, 10))
        self.assertEqual([i.path for i in infos], ["p.jpg"])

    def test_build(self):
        """build() takes the source, sourcePath, maxWidth and quality from the configuration."""
        config = parse({"services": [
            {"id": "api", "type": "api"},
            {"id": "files", "type": "storage"},
            {"id": "img", "type": "imageoptimizer", "source": "files", "sourcePath": "media",
             "maxWidth": 1200, "quality": 70},
        ]})
        registry = ServiceRegistry()
        registry.add("files", self.files)
        optimizer = imageoptimizer.build(config.service("img"),
                                         ServiceContext(Path("/d"), self.clock, config, registry))
        self.assertEqual((optimizer.source, optimizer.source_path, optimizer.max_width,
                          optimizer.quality), (self.files, "media", 1200, 70))


class BadInputTests(OptimizerTestCase):
    def test_hostile_parameters_never_reach_the_source(self):
        """Invalid parameters fail with InvalidParameter before the source is asked."""
        for query in HOSTILE_QUERIES:
            self.failureResultOf(self.optimizer.get("a.jpg", query=query), InvalidParameter)
        self.assertEqual(self.source.gets, [])

    def test_not_what_the_type_says(self):
        """A JPEG labelled PNG, text labelled JPEG and a truncated JPEG are InvalidImage (415), never decoded as something else."""
        jpeg = encode(photo(), "JPEG")
        self.put("fake.png", jpeg, "image/png")
        self.put("fake.jpg", b"<html>not an image</html>", "image/jpeg")
        self.put("cut.jpg", jpeg[:len(jpeg) // 2], "image/jpeg")
        self.put("empty.webp", b"", "image/webp")
        for path in ("fake.png", "fake.jpg", "cut.jpg", "empty.webp"):
            failure = self.failureResultOf(self.optimizer.get(path, query="w=10"), InvalidImage)
            self.assertEqual((failure.value.status, failure.value.code), (415, "InvalidImage"))

    def test_pixel_bomb_refused_before_decoding(self):
        """A 100-megapixel PNG of a few KB is refused from its header, fast, without decoding a pixel."""
        bomb = png_bomb(10_000, 10_000)
        self.assertLess(len(bomb), 100_000)
        self.put("bomb.png", bomb, "image/png")
        loads = []
        real_load = ImageFile.ImageFile.load
        self.patch(ImageFile.ImageFile, "load",
                   lambda image: loads.append(image) or real_load(image))
        started = time.perf_counter()
        failure = self.failureResultOf(self.optimizer.get("bomb.png", query="w=10"), InvalidImage)
        self.assertLess(time.perf_counter() - started, 1.0)
        self.assertEqual(loads, [])
        self.assertIn("pixels", failure.value.message)
        self.flushWarnings()

    def test_big_input_refused_unread(self):
        """A source image over 50 MiB is refused without reading its body."""
        body = UnreadableBody(FileInfo("huge.jpg", MAX_INPUT_BYTES + 1, 0.0, "e", "image/jpeg"))

        @implementer(IReadableFiles)
        class Huge:
            def get(self, path, version=None, query=""):
                return succeed(body)

            def list(self, prefix, after, limit):
                return succeed(([], None))

        optimizer = self.make_optimizer(source=Huge())
        self.failureResultOf(optimizer.get("huge.jpg", query="w=10"), InvalidImage)
        self.assertTrue(body.closed)


class PublicBindingTests(OptimizerTestCase):
    """
    What a client of a public binding sees from an optimizer.
    """

    def serve(self):
        raw = {"services": [
            {"id": "api", "type": "api"},
            {"id": "files", "type": "storage"},
            {"id": "img", "type": "imageoptimizer", "source": "files"},
            {"id": "www", "type": "public", "source": "img", "appendWebp": True},
        ]}
        registry = ServiceRegistry()
        registry.add("files", self.source)
        registry.add("img", self.optimizer)
        state = DaemonState(Path(self.mktemp()), parse(raw), registry, clock=self.clock)
        self.stub = StubTreq(Dispatcher(state))

    def request(self, url, headers=None):
        d = self.stub.get("http://cdn.example" + url, headers=headers or {})
        self.stub.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def test_webp_by_accept(self):
        """With appendWebp, a browser that accepts WebP gets WebP and one that does not gets JPEG, with Vary: Accept."""
        self.serve()
        self.put("photo.jpg", encode(photo(), "JPEG", quality=95), "image/jpeg")
        response, data = self.request("/photo.jpg?w=100", {"accept": "image/avif,image/webp,*/*"})
        self.assertEqual((response.code, decoded(data).format, decoded(data).size),
                         (200, "WEBP", (100, 75)))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/webp"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Accept"])
        response, data = self.request("/photo.jpg?w=100", {"accept": "image/*"})
        self.assertEqual(decoded(data).format, "JPEG")

    def test_errors_shown(self):
        """Bad parameters answer 400 InvalidParameter and an image that is not what it says 415 InvalidImage."""
        self.serve()
        self.put("fake.png", b"not a png", "image/png")
        response, body = self.request("/fake.png?w=abc")
        self.assertEqual((response.code, body), (400, b"400 InvalidParameter\n"))
        response, body = self.request("/fake.png?w=10")
        self.assertEqual((response.code, body), (415, b"415 InvalidImage\n"))
