"""
Public HTTP bindings: unauthenticated GET/HEAD access to a source
service, matched by host, port and path prefix.
"""

from urllib.parse import unquote_to_bytes

from owncdn import errors
from owncdn.config import ServiceConfig
from owncdn.interfaces import IHeadable
from owncdn.paths import normalize_path
from owncdn.services.memorycache import MemoryCache
from owncdn.web.cors import answer_preflight
from owncdn.web.fileresponse import send_file
from owncdn.web.handler import AsyncResource
from owncdn.web.site import PERCENT


def request_host(request) -> str:
    host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def matches_host_port(request, host: str | None, port: int | None) -> bool:
    if port is not None and request.getHost().port != port:
        return False
    return host is None or request_host(request) == host


class PublicBinding(AsyncResource):
    """
    One C{public} service: strips C{pathPrefix}, prepends C{sourcePath}
    and serves the file from the source service.
    """

    def __init__(self, service_config: ServiceConfig, state):
        super().__init__()
        self.sid = service_config.id
        self.options = options = service_config.options
        self.state = state
        # The options every request reads, as attributes.
        self.host, self.port = options["host"], options["port"]
        self.cors = options["cors"]
        self.source_id = options["source"]
        self.source_path = options["sourcePath"]
        self.remove_query = options["removeQuery"]
        self.append_webp = options["appendWebp"]
        # The source, and its held-item lookup when it is a memory cache
        # (see handle).
        self._source = None
        self._held = None
        self.prefix = self.options["pathPrefix"].encode("utf-8")
        if not self.prefix.endswith(b"/"):
            self.prefix += b"/"
        seconds = self.options["clientCacheSeconds"]
        self.headers = {b"cache-control": b"public, max-age=%d" % seconds} if seconds else {}
        if self.options["appendWebp"]:
            # The answer depends on Accept: shared caches must key on it.
            self.headers[b"vary"] = b"Accept"

    def matches(self, request) -> bool:
        path = request.path
        if not (path.startswith(self.prefix) or path + b"/" == self.prefix):
            return False
        return matches_host_port(request, self.host, self.port)

    def _source_request(self, request) -> tuple[str, str]:
        """
        The path and query to ask the source for: C{pathPrefix} removed,
        C{sourcePath} prepended; the query as sent (unless
        C{removeQuery}), with C{webp=1}/C{webp=0} added by
        C{appendWebp}.
        """
        raw = request.path[len(self.prefix):]
        if not raw:
            raise errors.NoSuchFile("a public binding serves files, not folders")
        try:
            path = (unquote_to_bytes(raw) if PERCENT in raw else raw).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidPath("the path is not valid UTF-8") from None
        if self.source_path:
            path = self.source_path + "/" + path
        path = normalize_path(path)
        query = b"" if self.remove_query else request.uri.partition(b"?")[2]
        if self.append_webp:
            accept = request.getHeader(b"accept") or b""
            webp = b"webp=1" if b"image/webp" in accept else b"webp=0"
            query = query + b"&" + webp if query else webp
        return path, query.decode("utf-8", "replace")

    async def handle(self, request):
        request.logged_service = self.sid
        if self.cors:
            if request.method == b"OPTIONS":
                answer_preflight(request, b"GET, HEAD, OPTIONS")
                request.finish()
                return
            request.setHeader(b"access-control-allow-origin", b"*")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            raise errors.MethodNotAllowed("only GET and HEAD")
        path, query = self._source_request(request)
        source = self.state.registry.get(self.source_id)
        if source is not self._source:
            self._source = source
            self._held = source.held if isinstance(source, MemoryCache) else None
        # A memory-cache hit is answered without a Deferred to await;
        # for anything else (and for a HEAD of a held item: the cache's
        # head answers it as get does) the source is asked as usual.
        body = self._held(path, query) if self._held is not None else None
        if body is None:
            head = request.method == b"HEAD" and IHeadable.providedBy(source)
            body = await (source.head if head else source.get)(path, query=query)
        await send_file(request, body, self.headers)

    def send_error(self, request, error):
        status = error.status if error.status < 500 else 502
        if isinstance(error, (errors.NoSuchFile, errors.NoSuchVersion, errors.InvalidPath)):
            status = 404 if not isinstance(error, errors.InvalidPath) else 400
        body = b"" if request.method == b"HEAD" else (
            f"{status} {error.code}\n".encode())
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
