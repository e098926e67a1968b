"""
The image chain end to end, with the real daemon (C{twistd -n owncdn}):

    public (appendWebp) -> diskcache -> imageoptimizer -> storage

Images made with Pillow are uploaded through standard mode and fetched
through the public binding as a browser would; what comes back is
decoded to check its format and size.  The disk cache's counters
(C{servicelist}) tell hits from misses, across a restart too.
"""

import io
from pathlib import Path

import treq
from PIL import Image
from twisted.trial.unittest import TestCase

from tests.daemon import start_daemon, write_config
from tests.test_imageoptimizer import encode, photo, stripes
from tests.util import asynctest

WAIT = 20
WRITER = "writer-secret-0123456789"
WEBP_BROWSER = {"accept": "image/avif,image/webp,image/apng,*/*;q=0.8"}
SERVICES = [
    {"id": "api", "type": "api"},
    {"id": "files", "type": "storage"},
    {"id": "img", "type": "imageoptimizer", "source": "files", "maxWidth": 1024,
     "quality": 75},
    {"id": "disk", "type": "diskcache", "source": "img", "maxSize": "64MB",
     "expireNotFound": 60},
    {"id": "www", "type": "public", "source": "disk", "appendWebp": True,
     "clientCacheSeconds": 3600},
]


async def get(url: str, headers=None):
    response = await treq.get(url, headers=headers or {}, persistent=False, timeout=WAIT)
    return response, await treq.content(response)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class ImageChainTests(TestCase):
    timeout = 60

    async def start(self, data_dir: Path) -> str:
        self.daemon = await start_daemon(self, data_dir)
        return self.daemon.url

    async def upload(self, url: str, path: str, data: bytes, content_type: str) -> None:
        response = await treq.put(f"{url}/uploadfile?sid=files&path={path}", data=data,
                                  headers={"x-owncdn-key": WRITER,
                                           "content-type": content_type},
                                  persistent=False, timeout=WAIT)
        self.assertEqual(response.code, 200, await response.text())

    async def disk_stats(self, url: str) -> dict:
        response = await treq.get(f"{url}/servicelist", headers={"x-owncdn-key": WRITER},
                                  persistent=False, timeout=WAIT)
        services = (await response.json())["services"]
        return next(s["stats"] for s in services if s["id"] == "disk")

    @asynctest
    async def test_resized_webp_cached_across_restart(self):
        """A JPEG asked for at w=100 by a WebP browser comes back a 100-pixel WebP, from the disk cache the second time and after a restart."""
        data_dir = Path(self.mktemp()).absolute()
        write_config(data_dir, services=SERVICES)
        url = await self.start(data_dir)
        original = encode(photo(800, 600), "JPEG", quality=95)
        await self.upload(url, "img/photo.jpg", original, "image/jpeg")

        response, webp = await get(url + "/img/photo.jpg?w=100", WEBP_BROWSER)
        self.assertEqual(response.code, 200)
        image = decoded(webp)
        self.assertEqual((image.format, image.size), ("WEBP", (100, 75)))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["image/webp"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Accept"])
        etag = response.headers.getRawHeaders("etag")[0]

        response, again = await get(url + "/img/photo.jpg?w=100", WEBP_BROWSER)
        self.assertEqual((response.code, again), (200, webp))
        stats = await self.disk_stats(url)
        self.assertEqual((stats["hits"], stats["misses"], stats["sourceRequests"]), (1, 1, 1))

        response, jpeg = await get(url + "/img/photo.jpg?w=100", {"accept": "image/*"})
        self.assertEqual((decoded(jpeg).format, decoded(jpeg).size), ("JPEG", (100, 75)))
        response, _ = await get(url + "/img/photo.jpg?w=100",
                                dict(WEBP_BROWSER, **{"if-none-match": etag}))
        self.assertEqual(response.code, 304)

        await self.daemon.stop()
        url = await self.start(data_dir)
        response, after = await get(url + "/img/photo.jpg?w=100", WEBP_BROWSER)
        self.assertEqual((response.code, after), (200, webp))
        self.assertEqual(response.headers.getRawHeaders("etag"), [etag])
        stats = await self.disk_stats(url)
        self.assertEqual((stats["hits"], stats["misses"], stats["sourceRequests"]), (1, 0, 0))
        self.assertEqual(stats["items"], 2)

    @asynctest
    async def test_crop_png_and_bad_input(self):
        """A PNG crops to the middle; bad parameters answer 400, a mislabelled image 415, a missing one 404, and none is cached as content."""
        data_dir = Path(self.mktemp()).absolute()
        write_config(data_dir, services=SERVICES)
        url = await self.start(data_dir)
        await self.upload(url, "s.png", encode(stripes(900, 300), "PNG"), "image/png")
        await self.upload(url, "fake.png", b"<html>not a png</html>", "image/png")
        await self.upload(url, "big.jpg", encode(photo(2000, 1000), "JPEG"), "image/jpeg")

        response, data = await get(url + "/s.png?w=60&h=60&c=1")
        image = decoded(data).convert("RGB")
        self.assertEqual((response.code, image.size, image.getpixel((30, 30))),
                         (200, (60, 60), (0, 255, 0)))
        response, data = await get(url + "/big.jpg")
        self.assertEqual(decoded(data).size, (1024, 512))

        for query in ("w=abc", "w=0", "w=100000", "w=1&w=2", "c=2"):
            response, body = await get(url + "/s.png?" + query)
            self.assertEqual((response.code, body), (400, b"400 InvalidParameter\n"), query)
        for _ in range(2):
            response, body = await get(url + "/fake.png?w=10")
            self.assertEqual((response.code, body), (415, b"415 InvalidImage\n"))
            response, _ = await get(url + "/missing.png?w=10")
            self.assertEqual(response.code, 404)
        stats = await self.disk_stats(url)
        self.assertEqual((stats["items"], stats["negativeHits"]), (2, 1))
