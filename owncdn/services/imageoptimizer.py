"""
The C{imageoptimizer} service: JPEG, PNG, GIF and WebP images of a
source service, resized and re-encoded with Pillow.

Query parameters (SPEC section 2): C{w} and C{h} bound the width and
height (never enlarged; never wider than C{maxWidth} either), C{c=1}
crops to the middle when both are given, C{webp=1} asks for WebP.  The
query is stripped before the source is asked.  The result is served
only when it is smaller than the original or has other dimensions;
otherwise the original is.  Anything that is not one of those image
types passes through untouched.

Decoding is where images attack: an input is refused (L{InvalidImage},
415) before it is read when it is over L{MAX_INPUT_BYTES}, and before
it is decoded when its header announces more than L{MAX_PIXELS}.  A file
whose bytes are not the format its content type names is refused the
same way, never decoded as something else.  All Pillow work runs in a
thread pool the service owns, at most L{WORKERS} images at a time, so
memory is bounded by that many inputs and decoded images.

Results are deterministic (same source ETag, parameters and settings,
same bytes), so caches in front of the optimizer work: the result's
ETag is derived from exactly those.
"""

import hashlib
import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from owncdn.errors import InvalidParameter, OwnCDNError, SourceError
from owncdn.interfaces import FileInfo, IReadableFiles
from owncdn.storage.bodies import BytesBody

# An input bigger than this is refused without being read.
MAX_INPUT_BYTES = 50 * 1024 * 1024
# An image announcing more pixels than this is refused without being
# decoded: 50 megapixels decode to 200 MB of RGBA.
MAX_PIXELS = 50_000_000
# The largest w or h a client may ask for (WebP's own limit is 16383).
MAX_DIMENSION = 16383
# Images processed at once: each holds its input and decoded pixels.
WORKERS = 2
# Part of every result's ETag: bump it when the same input and
# parameters would now give other bytes, so no cache keeps the old ones.
ENCODER_VERSION = 1

# Pillow refuses images over twice MAX_IMAGE_PIXELS and warns over it;
# as Pillow's documentation advises, the warning is made an error too.
# We also check the header ourselves (see _open), which does not rely
# on the warnings filters of the process.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)

_SOURCE_FORMATS = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
# A still GIF is re-encoded as PNG: lossless, and smaller.
_OUTPUT_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "PNG", "WEBP": "WEBP"}
_OUTPUT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_NUMBER = re.compile(r"[0-9]{1,5}")
# EXIF orientations that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)


class InvalidImage(OwnCDNError):
    """
    The source's file is not an image this service will decode: not
    the format its content type names, damaged, or over the limits.
    """

    code = "InvalidImage"
    status = 415


@dataclass(frozen=True)
class ImageRequest:
    """
    What a query asks of an image.
    """

    width: int | None = None
    height: int | None = None
    crop: bool = False
    webp: bool = False

    def canonical(self) -> str:
        return f"w={self.width or ''}&h={self.height or ''}&c={int(self.crop)}&webp={int(self.webp)}"


def parse_query(query: str) -> ImageRequest:
    """
    The C{w}, C{h}, C{c} and C{webp} parameters of a query; other
    parameters (cache busters such as C{v=3}) are ignored.

    @raise InvalidParameter: a parameter given twice, a size that is
        not a whole number from 1 to L{MAX_DIMENSION}, a flag other
        than 0 or 1.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=100)
    except ValueError:
        raise InvalidParameter("the query has too many parameters") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in ("w", "h", "c", "webp"):
            continue
        if name in values:
            raise InvalidParameter(f"{name} is given more than once")
        values[name] = value

    def size(name: str) -> int | None:
        if name not in values:
            return None
        value = values[name]
        if not _NUMBER.fullmatch(value) or not 1 <= int(value) <= MAX_DIMENSION:
            raise InvalidParameter(
                f"{name} must be a whole number of pixels from 1 to {MAX_DIMENSION}")
        return int(value)

    def flag(name: str) -> bool:
        value = values.get(name, "0")
        if value not in ("0", "1"):
            raise InvalidParameter(f"{name} must be 0 or 1")
        return value == "1"

    return ImageRequest(size("w"), size("h"), flag("c"), flag("webp"))


Box = tuple[float, float, float, float]


def output_geometry(size: tuple[int, int], request: ImageRequest,
                    max_width: int) -> tuple[tuple[int, int], Box]:
    """
    The output's size and the part of the image it shows.

    Without cropping the image is scaled to fit C{w} x C{h}; with C{c=1}
    and both given, it is scaled to cover them and the middle is kept.
    Never enlarged, never wider than C{max_width}.

    @param size: the image's width and height, as displayed.
    @return: C{(width, height)} and the source box C{(left, top, right,
        bottom)} in the image's pixels.
    """
    width, height = size
    box_width = min(request.width or width, max_width)
    if request.crop and request.width and request.height:
        scale = min(1.0, max(box_width / width, request.height / height))
        out = (min(box_width, max(1, round(width * scale))),
               min(request.height, max(1, round(height * scale))))
        shown_width, shown_height = min(width, out[0] / scale), min(height, out[1] / scale)
        left, top = (width - shown_width) / 2, (height - shown_height) / 2
        return out, (left, top, left + shown_width, top + shown_height)
    scale = min(1.0, box_width / width, request.height / height if request.height else 1.0)
    return ((max(1, round(width * scale)), max(1, round(height * scale))),
            (0.0, 0.0, float(width), float(height)))


@dataclass(frozen=True)
class Optimized:
    """
    A re-encoded image, and the size of the original as displayed.
    """

    data: bytes
    content_type: str
    size: tuple[int, int]
    original_size: tuple[int, int]


def _open(data: bytes, source_format: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=[source_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(f"the image has more than {MAX_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidImage(f"the file is not a {source_format} image") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise InvalidImage(f"the image has {image.width}x{image.height} pixels; "
                           f"at most {MAX_PIXELS} are decoded")
    return image


def _working_mode(image: Image.Image, output_format: str) -> str:
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if output_format == "JPEG" or not alpha:
        grey = image.mode in ("1", "L") and output_format != "WEBP"
        return "L" if grey else "RGB"
    return "RGBA"


def optimize(data: bytes, source_format: str, request: ImageRequest, max_width: int,
             quality: int) -> Optimized | None:
    """
    Resize and re-encode one image; blocking, for a worker thread.

    @return: the result, or C{None} when the original must be served
        as it is (an animation, which this service leaves alone, or an
        output its encoder refuses).
    @raise InvalidImage: the data is not a decodable C{source_format}
        image within the limits.
    """
    image = _open(data, source_format)
    if getattr(image, "is_animated", False):
        return None
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError):
        orientation = 1
    shown = (image.height, image.width) if orientation in _TRANSPOSED else image.size
    out, box = output_geometry(shown, request, max_width)
    if source_format == "JPEG":
        # Let the JPEG decoder scale down by 1/2 to 1/8 on the way: less
        # memory and time, and still at least the output's size.
        scale = out[0] / (box[2] - box[0])
        image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise InvalidImage(f"the {source_format} image is damaged") from None
    icc_profile = image.info.get("icc_profile")
    output_format = "WEBP" if request.webp else _OUTPUT_FORMATS[source_format]
    try:
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        mode = _working_mode(image, output_format)
        if image.mode != mode:
            image = image.convert(mode)
        # The decoder may have scaled down already: the box follows.
        fx, fy = image.width / shown[0], image.height / shown[1]
        if out != image.size or box != (0.0, 0.0, float(shown[0]), float(shown[1])):
            image = image.resize(out, Image.Resampling.LANCZOS,
                                 box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy),
                                 reducing_gap=3.0)
        options = {"icc_profile": icc_profile} if icc_profile else {}
        if output_format == "JPEG":
            options.update(quality=quality, optimize=True, progressive=True)
        elif output_format == "WEBP":
            options.update(quality=quality, method=4)
        else:
            options.update(optimize=True)
        encoded = io.BytesIO()
        image.save(encoded, output_format, **options)
    except (OSError, ValueError):
        # A mode or size the encoders do not take: the original it is.
        return None
    return Optimized(encoded.getvalue(), _OUTPUT_TYPES[output_format], image.size, shown)


async def _read_whole(body) -> bytes:
    parts, received = [], 0
    try:
        while received < body.info.size:
            data = await body.read(received, body.info.size - received)
            if not data:
                raise SourceError("the source's body ended before its announced size")
            parts.append(data)
            received += len(data)
    finally:
        body.close()
    if received != body.info.size:
        raise SourceError("the source's body is longer than announced")
    return b"".join(parts)


@implementer(IReadableFiles)
class ImageOptimizer(Service):
    """
    @param source: the service the originals come from.
    @param clock: the reactor (C{callFromThread} for the pool).
    @param make_pool: builds a thread pool from C{(minthreads,
        maxthreads, name)}; tests pass pools that run jobs inline.
    """

    def __init__(self, source, *, source_path: str = "", max_width: int = 4096,
                 quality: int = 80, clock, name: str = "imageoptimizer",
                 make_pool: Callable[[int, int, str], ThreadPool] = ThreadPool):
        self.source = source
        self.source_path = source_path
        self.max_width = max_width
        self.quality = quality
        self._clock = clock
        self._pool = make_pool(0, WORKERS, name)
        self._slots = DeferredSemaphore(WORKERS)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self):
        super().stopService()
        self._pool.stop()

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        try:
            request = parse_query(query)
        except InvalidParameter:
            return fail()
        return Deferred.fromCoroutine(self._serve(self._source_path(path), version, request))

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        """
        The source's files under C{sourcePath}, named as here.
        """
        if not self.source_path:
            return self.source.list(prefix, after, limit)
        strip = len(self.source_path) + 1

        def renamed(result):
            infos, following = result
            return ([replace(info, path=info.path[strip:]) for info in infos],
                    following[strip:] if following is not None else None)

        after = self._source_path(after) if after is not None else None
        return self.source.list(self._source_path(prefix), after, limit).addCallback(renamed)

    def _source_path(self, path: str) -> str:
        return f"{self.source_path}/{path}" if self.source_path else path

    # Optimizing

    def etag(self, source: FileInfo, request: ImageRequest) -> str:
        """
        The ETag of what this service serves for C{source} and
        C{request}: it changes with any of them or with the settings.
        """
        recipe = (f"{source.etag}|{request.canonical()}|{self.max_width}|{self.quality}"
                  f"|{ENCODER_VERSION}")
        return hashlib.md5(recipe.encode()).hexdigest()

    async def _serve(self, path: str, version: str | None, request: ImageRequest):
        body = await self.source.get(path, version)
        media_type = body.info.content_type.partition(";")[0].strip().lower()
        source_format = _SOURCE_FORMATS.get(media_type)
        if source_format is None:
            return body
        if body.info.size > MAX_INPUT_BYTES:
            body.close()
            raise InvalidImage(f"the image is {body.info.size} bytes; at most "
                               f"{MAX_INPUT_BYTES} are decoded")
        await self._slots.acquire()
        try:
            data = await _read_whole(body)
            result = await deferToThreadPool(self._clock, self._pool, optimize, data,
                                             source_format, request, self.max_width,
                                             self.quality)
        finally:
            self._slots.release()
        info = replace(body.info, path=path, etag=self.etag(body.info, request), sha256=None,
                       metadata={})
        if result is None or (len(result.data) >= len(data)
                              and result.size == result.original_size):
            return BytesBody(replace(info, size=len(data)), data)
        return BytesBody(replace(info, size=len(result.data), content_type=result.content_type),
                         result.data)


def build(service_config, context) -> ImageOptimizer:
    options = service_config.options
    return ImageOptimizer(
        context.registry.get(options["source"]),
        source_path=options["sourcePath"],
        max_width=options["maxWidth"],
        quality=options["quality"],
        clock=context.reactor,
        name=f"imageoptimizer-{service_config.id}",
    )
