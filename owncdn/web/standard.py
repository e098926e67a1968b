"""
Standard mode: the JSON API of SPEC section 4, chosen by the
C{x-owncdn-key} header.

The front door (key, function, method, parameters, service access) is
here; each function is a small coroutine that talks to the service
interfaces and nothing else.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from owncdn import errors
from owncdn.interfaces import ICache, IHeadable, IReadableFiles, IVersionedFiles, IWritableFiles
from owncdn.keys import LEVELS, access_level, require
from owncdn.paths import normalize_path
from owncdn.web.fileresponse import send_file
from owncdn.web.handler import AsyncResource
from owncdn.web.reqlog import rfc3339
from owncdn.web.site import parse_query

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 1000
MAX_REQLIST_LIMIT = 100
# What curl and HTML forms send when nobody chose a type: not a real one.
NON_TYPES = {"", "application/x-www-form-urlencoded"}


def json_body(request, status: int, value) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


# The parameter names asked for on every request, encoded once.
_NAMES = {name: name.encode() for name in ("sid", "path", "version")}


class Params:
    """
    The query parameters of one request, each given at most once.
    """

    def __init__(self, request):
        self._args = request.args

    def get(self, name: str, default=None) -> str | None:
        values = self._args.get(_NAMES.get(name) or name.encode())
        if values is None:
            return default
        if len(values) > 1:
            raise errors.InvalidParameter(f"the parameter {name} is given more than once")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            if name == "path":
                raise errors.InvalidPath("the path is not valid UTF-8") from None
            raise errors.InvalidParameter(f"the parameter {name} is not valid UTF-8") from None

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise errors.MissingParameter(f"the parameter {name} is missing")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
            raise errors.InvalidParameter(
                f"the parameter {name} must be a whole number from {low} to {high}")
        return int(value)

    def path(self) -> str:
        return normalize_path(self.required("path"))


@dataclass
class Call:
    """
    One authenticated call: the request, its parameters, its key and
    (for functions that take C{sid}) the service and its ID.
    """

    request: object
    params: Params
    key: object
    state: object
    sid: str | None = None
    service: object = None


def file_json(info) -> dict:
    return {"path": info.path, "size": info.size, "modified": rfc3339(info.modified),
            "etag": info.etag, "contentType": info.content_type}


def _provided(interface, call: Call, function: str):
    if not interface.providedBy(call.service):
        raise errors.NotSupported(f"{function} is not offered by service {call.sid!r}")
    return call.service


async def servicelist(call: Call):
    services = []
    for service in call.state.config.services:
        level = access_level(call.key, service.id)
        if LEVELS[level] >= LEVELS["read"]:
            entry = {"id": service.id, "name": service.name, "type": service.type,
                     "access": level}
            poller = call.state.registry.pollers.get(service.id)
            if poller is not None:
                entry["replication"] = poller.status.as_json()
            if service.id in call.state.registry:
                running = call.state.registry.get(service.id)
                if ICache.providedBy(running):
                    entry["stats"] = running.stats()
            services.append(entry)
    json_body(call.request, 200, {"services": services})


async def filelist(call: Call):
    service = _provided(IReadableFiles, call, "filelist")
    prefix = call.params.get("prefix", "")
    if prefix.startswith("/"):
        prefix = prefix[1:]
    if any(ord(c) < 0x20 for c in prefix):
        raise errors.InvalidParameter("the prefix contains a control character")
    after = call.params.get("after")
    limit = call.params.integer("limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    infos, next_path = await service.list(prefix, after, limit)
    json_body(call.request, 200, {"files": [file_json(i) for i in infos], "next": next_path})


async def getfile(call: Call):
    service = _provided(IReadableFiles, call, "getfile")
    path = call.params.path()
    version = call.params.get("version")
    if version is not None and not IVersionedFiles.providedBy(service):
        raise errors.NotSupported(f"service {call.sid!r} keeps no versions")
    head = call.request.method == b"HEAD" and IHeadable.providedBy(service)
    body = await (service.head if head else service.get)(path, version)
    headers = {}
    if body.info.version is not None:
        headers[b"x-owncdn-version"] = body.info.version.encode()
    await send_file(call.request, body, headers)


def _content_md5(request) -> bytes | None:
    header = request.getHeader(b"content-md5")
    if header is None:
        return None
    try:
        digest = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise errors.BadDigest("the Content-MD5 header is not a base64 MD5 digest")
    return digest


async def uploadfile(call: Call):
    service = _provided(IWritableFiles, call, "uploadfile")
    path = call.params.path()
    request = call.request
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1").strip()
    expected_md5 = _content_md5(request)
    request.content.seek(0)
    info = await service.put(
        path, request.content,
        content_type=None if content_type.lower() in NON_TYPES else content_type,
        expected_md5=expected_md5,
    )
    json_body(request, 200, {"path": info.path, "size": info.size, "etag": info.etag,
                             "version": info.version, "sha256": info.sha256})


async def deletefile(call: Call):
    service = _provided(IWritableFiles, call, "deletefile")
    info = await service.delete(call.params.path())
    json_body(call.request, 200, {"path": info.path, "deleted": True, "version": info.version})


async def versionlist(call: Call):
    service = _provided(IVersionedFiles, call, "versionlist")
    path = call.params.path()
    versions = await service.versions(path)
    json_body(call.request, 200, {"path": path, "versions": [
        {"version": v.version, "size": v.size, "modified": rfc3339(v.modified),
         "etag": v.etag, "deleted": v.deleted, "current": v.current}
        for v in versions
    ]})


async def flush(call: Call):
    service = _provided(ICache, call, "flush")
    flushed = await service.flush()
    json_body(call.request, 200, {"flushed": flushed})


async def syncnext(call: Call):
    feed = call.state.feed(call.sid)
    if feed is None:
        raise errors.NotSupported(f"syncnext is not offered by service {call.sid!r}")
    after = call.params.integer("after", 0, 0, 2**63 - 1)
    limit = call.params.integer("limit", 1, 1, 1000)
    wait = call.params.integer("wait", 0, 0, 60)
    changes = await feed.next_changes(after, limit, wait, call.state.clock)
    json_body(call.request, 200, {
        "dbid": call.service.dbid,
        "last": call.service.last_change_id(),
        "changes": [{
            "id": c.id, "time": rfc3339(c.time), "op": c.op, "path": c.path,
            "version": c.version, "size": c.size, "etag": c.etag, "sha256": c.sha256,
            "contentType": c.content_type, "metadata": c.metadata,
        } for c in changes],
    })


async def reqlist(call: Call):
    request_log = call.request.channel.site.request_logs.get(call.sid)
    if request_log is None:
        raise errors.NotSupported("reqlist needs an api or public service")
    limit = call.params.integer("limit", MAX_REQLIST_LIMIT, 1, MAX_REQLIST_LIMIT)
    json_body(call.request, 200, {"requests": request_log.latest(limit)})


@dataclass(frozen=True)
class Function:
    methods: tuple[bytes, ...]
    level: str | None  # None: no sid
    run: Callable[[Call], Awaitable[None]]
    web_service: bool = False  # sid names an api/public service


FUNCTIONS = {
    "servicelist": Function((b"GET", b"HEAD"), None, servicelist),
    "filelist": Function((b"GET", b"HEAD"), "read", filelist),
    "getfile": Function((b"GET", b"HEAD"), "read", getfile),
    "uploadfile": Function((b"PUT", b"POST"), "write", uploadfile),
    "deletefile": Function((b"DELETE", b"POST"), "write", deletefile),
    "flush": Function((b"POST",), "write", flush),
    "versionlist": Function((b"GET", b"HEAD"), "read", versionlist),
    "syncnext": Function((b"GET",), "read", syncnext),
    "reqlist": Function((b"GET", b"HEAD"), "read", reqlist, web_service=True),
}


# The usual request targets, /getfile and so on, without decoding.
_BY_PATH = {b"/" + name.encode(): (name, function) for name, function in FUNCTIONS.items()}


class StandardAPI(AsyncResource):
    """
    The standard-mode endpoint: C{/<function>?<params>}.
    """

    def __init__(self, state, cors: bool = False):
        super().__init__()
        self.state = state
        self.cors = cors
        self._openapi = OPENAPI_PATH.read_bytes()
        # The configured services are fixed for the daemon's life (a
        # reload changes keys and replication sources only).
        self._service_ids = frozenset(s.id for s in state.config.services)

    async def handle(self, request):
        request.logged_service = "api"
        if self.cors:
            request.setHeader(b"access-control-allow-origin", b"*")
            request.setHeader(b"access-control-expose-headers",
                              b"ETag, Content-Length, Content-Range, x-owncdn-version")
        key = self.state.keys.by_value(request.getHeader(b"x-owncdn-key"))
        named = _BY_PATH.get(request.path)
        if named is not None:
            name, function = named
        else:
            try:
                name = request.path.decode("utf-8").lstrip("/")
            except UnicodeDecodeError:
                raise errors.NoSuchFunction("the function name is not valid UTF-8") from None
            if name == "openapi.json" and request.method in (b"GET", b"HEAD"):
                self._send_openapi(request)
                return
            function = FUNCTIONS.get(name)
            if function is None:
                raise errors.NoSuchFunction(f"there is no function {name[:100]!r}")
        if request.method not in function.methods:
            request.setHeader(b"allow", b", ".join(function.methods))
            raise errors.MethodNotAllowed(
                f"{name} does not accept {request.method.decode('latin-1')[:20]}")
        call = Call(request, Params(request), key, self.state)
        if function.level is not None:
            call.sid = call.params.required("sid")
            if call.sid not in self._service_ids:
                raise errors.NoSuchService(f"no service {call.sid!r}")
            require(key, call.sid, function.level)
            if not function.web_service:
                if call.sid not in self.state.registry:
                    raise errors.NotSupported(f"{name} is not offered by service {call.sid!r}")
                call.service = self.state.registry.get(call.sid)
        await function.run(call)

    def stage_body(self, request, method: bytes, target: bytes, length: int):
        """
        For an C{uploadfile} by a key that may write the service, the
        service's staged body: the file is stored while it arrives
        (L{owncdn.storage.staging}).  Anything else is spooled as usual
        (C{None}); L{handle} checks everything again once the body is in.
        """
        path, _, query = target.partition(b"?")
        if path != b"/uploadfile" or method not in (b"PUT", b"POST"):
            return None
        sids = parse_query(query).get(b"sid", [])
        sid = sids[0].decode("utf-8", "replace") if len(sids) == 1 else ""
        try:
            key = self.state.keys.by_value(request.getHeader(b"x-owncdn-key"))
        except errors.InvalidKey:
            return None
        if (sid not in self._service_ids or sid not in self.state.registry
                or access_level(key, sid) != "write"):
            return None
        stage = getattr(self.state.registry.get(sid), "stage_body", None)
        return None if stage is None else stage(length, request.channel.transport)

    def _send_openapi(self, request):
        body = self._openapi
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def send_error(self, request, error):
        if request.method == b"HEAD":
            request.setResponseCode(error.status)
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        json_body(request, error.status,
                  {"error": {"code": error.code, "message": error.message}})
