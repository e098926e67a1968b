"""
docs/openapi.json against the code and against the running daemon.

The document tests check it is well formed and in step with the
dispatch table and the error classes.  The live tests start the real
daemon, call every function, and validate each real JSON body against
the schema the document gives for that path, method and status, so the
description cannot drift from what clients get.
"""

import base64
import hashlib
import json
import os
from email.utils import formatdate
from pathlib import Path

import brotli
import treq
from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn import errors
from owncdn.web.standard import FUNCTIONS
from tests.daemon import start_daemon, write_config
from tests.util import asynctest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT_PATH = ROOT / "docs" / "openapi.json"
DOCUMENT_URI = "urn:owncdn:openapi"
DOCUMENT = json.loads(DOCUMENT_PATH.read_text())
REGISTRY = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))
NINE_FUNCTIONS = {"servicelist", "filelist", "getfile", "uploadfile", "deletefile",
                  "flush", "versionlist", "syncnext", "reqlist"}
OPERATIONS = ("get", "head", "put", "post", "delete", "patch", "options", "trace")
REQUEST_TIMEOUT = 30
LIMITED = "limited-secret-0123456789"


def _pointer(ref: str):
    """
    The object a local C{$ref} (C{#/a/b}) points to in the document.
    """
    assert ref.startswith("#/"), ref
    node = DOCUMENT
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _resolved(node: dict) -> dict:
    while "$ref" in node:
        node = _pointer(node["$ref"])
    return node


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def validator_for(ref: str) -> OAS31Validator:
    """
    A validator for the schema at C{ref}, with every C{$ref} inside it
    resolved against the whole document.
    """
    return OAS31Validator({"$ref": DOCUMENT_URI + ref}, registry=REGISTRY,
                          format_checker=FormatChecker())


def operation_schema_ref(path: str, method: str, status: int) -> str:
    """
    Where the JSON body schema of one documented response is, as a
    pointer into the document (following a response C{$ref}).
    """
    responses = DOCUMENT["paths"][path][method]["responses"]
    response = responses[str(status)]
    base = "#/paths/" + _escape(path) + "/" + method + "/responses/" + str(status)
    while "$ref" in response:
        base = response["$ref"]
        response = _pointer(base)
    return base + "/content/application~1json/schema"


def all_refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


class DocumentTests(SynchronousTestCase):
    def test_nine_functions(self):
        """The document has exactly the nine functions, plus /openapi.json."""
        self.assertEqual(set(DOCUMENT["paths"]),
                         {"/" + name for name in NINE_FUNCTIONS} | {"/openapi.json"})
        self.assertEqual(set(FUNCTIONS), NINE_FUNCTIONS)

    def test_version_and_security(self):
        """OpenAPI 3.1, and every operation needs the x-owncdn-key header."""
        self.assertTrue(DOCUMENT["openapi"].startswith("3.1."))
        scheme = DOCUMENT["components"]["securitySchemes"]["ownCdnKey"]
        self.assertEqual(scheme, dict(scheme, type="apiKey", **{"in": "header"},
                                      name="x-owncdn-key"))
        self.assertEqual(DOCUMENT["security"], [{"ownCdnKey": []}])

    def test_packaged_copy_is_a_symlink(self):
        """owncdn/openapi.json, which the server reads, is a link to docs/openapi.json."""
        packaged = ROOT / "owncdn" / "openapi.json"
        self.assertTrue(packaged.is_symlink())
        self.assertEqual(packaged.resolve(), DOCUMENT_PATH.resolve())

    def test_methods_match_dispatch(self):
        """Each function documents the methods it accepts (HEAD of JSON functions aside)."""
        for name, function in FUNCTIONS.items():
            documented = {m.upper() for m in DOCUMENT["paths"]["/" + name] if m in OPERATIONS}
            accepted = {m.decode() for m in function.methods}
            self.assertTrue(documented <= accepted, name)
            self.assertEqual(accepted - documented - {"HEAD"}, set(), name)
        self.assertEqual(set(DOCUMENT["paths"]["/getfile"]), {"get", "head"})

    def test_refs_resolve(self):
        """Every $ref in the document points at something that exists."""
        for ref in all_refs(DOCUMENT):
            self.assertIsInstance(_pointer(ref), dict, ref)

    def test_schemas_are_valid(self):
        """Every component schema is a valid OpenAPI 3.1 schema."""
        for name, schema in DOCUMENT["components"]["schemas"].items():
            try:
                OAS31Validator.check_schema(schema)
            except Exception as e:
                self.fail(f"{name}: {e}")

    def test_error_codes_and_statuses(self):
        """Each error schema lists the codes of its status, as errors.py defines them."""
        documented = {}
        for name, schema in DOCUMENT["components"]["schemas"].items():
            if name.startswith("Error") and name != "Error":
                code = schema["properties"]["error"]["properties"]["code"]
                for value in code.get("enum", [code.get("const")]):
                    documented[value] = int(name[len("Error"):])
        defined = {cls.code: cls.status for cls in vars(errors).values()
                   if isinstance(cls, type) and issubclass(cls, errors.OwnCDNError)
                   and cls is not errors.OwnCDNError}
        defined["InternalError"] = 500
        # Answered by the site itself when a body cannot be spooled.
        defined["InsufficientStorage"] = 507
        self.assertEqual(documented, defined)

    def test_json_bodies_are_closed(self):
        """Every object schema of a success body lists required fields and allows no others."""
        # Fields that only some services have: replica status, cache counters.
        optional = {"Service": {"replication", "stats"}}
        for name, schema in DOCUMENT["components"]["schemas"].items():
            if schema.get("type") == "object":
                self.assertIs(schema.get("additionalProperties"), False, name)
                self.assertEqual(set(schema["required"]) | optional.get(name, set()),
                                 set(schema["properties"]), name)

    def test_validation_catches_drift(self):
        """The validator refuses a body with an extra field or a wrong type."""
        ref = operation_schema_ref("/filelist", "get", 200)
        good = {"files": [{"path": "a", "size": 1, "modified": "2025-01-31T12:00:00.000Z",
                           "etag": "x", "contentType": "text/plain"}], "next": None}
        validator_for(ref).validate(good)
        for bad in ({**good, "extra": 1}, {**good, "next": 3}, {"files": []},
                    {"files": [dict(good["files"][0], modified="yesterday")], "next": None}):
            self.assertRaises(ValidationError, validator_for(ref).validate, bad)
        error_ref = operation_schema_ref("/filelist", "get", 404)
        self.assertRaises(ValidationError, validator_for(error_ref).validate,
                          {"error": {"code": "AccessDenied", "message": "m"}})


class LiveTests(TestCase):
    """
    Real requests to a real daemon, each body checked against the document.
    """

    services = None
    top: dict = {}

    @asynctest
    async def setUp(self):
        data_dir = Path(self.mktemp()).absolute()
        self.keys = write_config(
            data_dir, services=self.services,
            keys=[{"id": "LIMITED", "value": LIMITED, "access": {"files": "read"}}],
            **self.top)
        self.daemon = await start_daemon(self, data_dir)
        self.writer = self.keys["WRITER"]
        self.reader = self.keys["READER"]

    async def call(self, method: str, function: str, key: str | None = None,
                   params: dict | None = None, headers: dict | None = None, data=None):
        all_headers = {"x-owncdn-key": self.writer if key is None else key}
        all_headers.update(headers or {})
        response = await treq.request(
            method, self.daemon.url + "/" + function, params=params, headers=all_headers,
            data=data, timeout=REQUEST_TIMEOUT, persistent=False)
        body = await treq.content(response)
        return response, body

    async def checked(self, method: str, function: str, status: int, **kwargs):
        """
        Call a function, assert the status, and validate the JSON body
        against the documented schema for it.  Returns the decoded body.
        """
        response, body = await self.call(method, function, **kwargs)
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        value = json.loads(body)
        validator_for(operation_schema_ref("/" + function, method.lower(), status)).validate(value)
        return value

    def assert_error(self, value: dict, code: str):
        self.assertEqual(value["error"]["code"], code, value)

    async def upload(self, path: str, data: bytes, **headers) -> dict:
        return await self.checked("PUT", "uploadfile", 200, params={"sid": "files", "path": path},
                                  data=data, headers=headers)

    def header(self, response, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


class DocumentServedTests(LiveTests):
    @asynctest
    async def test_served_document_is_the_docs_file(self):
        """GET /openapi.json with any valid key returns docs/openapi.json byte for byte."""
        response, body = await self.call("GET", "openapi.json", key=self.reader)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, DOCUMENT_PATH.read_bytes())
        self.assertEqual(json.loads(body), DOCUMENT)

    @asynctest
    async def test_document_needs_a_key(self):
        """GET /openapi.json with a wrong key is the documented InvalidKey error."""
        value = await self.checked("GET", "openapi.json", 401, key="wrong-secret-0123456789")
        self.assert_error(value, "InvalidKey")


class FunctionTests(LiveTests):
    @asynctest
    async def test_servicelist(self):
        """servicelist lists what the key can read, in the documented shape."""
        value = await self.checked("GET", "servicelist", 200)
        self.assertEqual([(s["id"], s["type"], s["access"]) for s in value["services"]],
                         [("api", "api", "write"), ("files", "storage", "write")])
        value = await self.checked("GET", "servicelist", 200, key=LIMITED)
        self.assertEqual([(s["id"], s["access"]) for s in value["services"]],
                         [("files", "read")])

    @asynctest
    async def test_uploadfile_put_and_post(self):
        """uploadfile by PUT and POST answers the documented shape with true digests."""
        data = b"hello, world\n"
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        value = await self.upload("/docs/hello.txt", data,
                                  **{"Content-Type": "text/plain", "Content-MD5": md5})
        self.assertEqual(value["path"], "docs/hello.txt")
        self.assertEqual(value["size"], len(data))
        self.assertEqual(value["etag"], hashlib.md5(data).hexdigest())
        self.assertEqual(value["sha256"], hashlib.sha256(data).hexdigest())
        self.assertIsInstance(value["version"], str)
        posted = await self.checked("POST", "uploadfile", 200,
                                    params={"sid": "files", "path": "docs/hello.txt"}, data=b"v2")
        self.assertNotEqual(posted["version"], value["version"])

    @asynctest
    async def test_getfile_headers(self):
        """getfile sends the bytes with every documented header, and HEAD the same headers."""
        data = b"0123456789" * 10
        stored = await self.upload("a/b.bin", data, **{"Content-Type": "application/x-test"})
        for method in ("GET", "HEAD"):
            response, body = await self.call(method, "getfile",
                                             params={"sid": "files", "path": "a/b.bin"})
            self.assertEqual(response.code, 200)
            self.assertEqual(body, data if method == "GET" else b"")
            documented = _resolved(DOCUMENT["paths"]["/getfile"][method.lower()]
                                   ["responses"]["200"])["headers"]
            # Twisted's client keeps Content-Length out of the headers it shows.
            for name in set(documented) - {"Content-Encoding", "Vary", "Content-Length"}:
                self.assertIsNotNone(self.header(response, name), name)
            if method == "GET":
                self.assertEqual(response.length, len(data))
            self.assertEqual(self.header(response, "Content-Type"), "application/x-test")
            self.assertEqual(self.header(response, "ETag"), f'"{stored["etag"]}"')
            self.assertEqual(self.header(response, "x-owncdn-version"), stored["version"])
            self.assertEqual(self.header(response, "Accept-Ranges"), "bytes")

    @asynctest
    async def test_getfile_range(self):
        """A single Range gets 206 with Content-Range; one past the end gets 416."""
        data = bytes(range(256)) * 4
        await self.upload("r.bin", data)
        params = {"sid": "files", "path": "r.bin"}
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"Range": "bytes=10-19"})
        self.assertEqual((response.code, body), (206, data[10:20]))
        self.assertEqual(self.header(response, "Content-Range"), f"bytes 10-19/{len(data)}")
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"Range": "bytes=-5"})
        self.assertEqual((response.code, body), (206, data[-5:]))
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"Range": f"bytes={len(data)}-{len(data) + 9}"})
        self.assertEqual((response.code, body), (416, b""))
        self.assertEqual(self.header(response, "Content-Range"), f"bytes */{len(data)}")

    @asynctest
    async def test_getfile_open_range_past_end(self):
        """An open range starting at the end of the file (bytes=SIZE-) gets 416."""
        data = b"0123456789"
        await self.upload("open.bin", data)
        response, body = await self.call("GET", "getfile",
                                         params={"sid": "files", "path": "open.bin"},
                                         headers={"Range": f"bytes={len(data)}-"})
        self.assertEqual((response.code, body), (416, b""))


    @asynctest
    async def test_getfile_conditional(self):
        """If-None-Match and If-Modified-Since get 304; a failed If-Match gets 412."""
        stored = await self.upload("c.txt", b"conditional")
        params = {"sid": "files", "path": "c.txt"}
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"If-None-Match": f'"{stored["etag"]}"'})
        self.assertEqual((response.code, body), (304, b""))
        future = formatdate(2**31 - 1, usegmt=True)
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"If-Modified-Since": future})
        self.assertEqual((response.code, body), (304, b""))
        response, body = await self.call("GET", "getfile", params=params,
                                         headers={"If-None-Match": '"other"'})
        self.assertEqual((response.code, body), (200, b"conditional"))
        response, _ = await self.call("GET", "getfile", params=params,
                                      headers={"If-Match": '"other"'})
        self.assertEqual(response.code, 412)

    @asynctest
    async def test_getfile_brotli(self):
        """With Accept-Encoding: br the body may come Brotli-coded, and decodes to the file."""
        data = b"compress me please " * 2000
        await self.upload("big.txt", data, **{"Content-Type": "text/plain"})
        response, body = await self.call("GET", "getfile",
                                         params={"sid": "files", "path": "big.txt"},
                                         headers={"Accept-Encoding": "br"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(body))
        if self.header(response, "Content-Encoding") == "br":
            self.assertEqual(self.header(response, "Vary"), "Accept-Encoding")
            body = brotli.decompress(body)
        else:
            self.assertIsNone(self.header(response, "Content-Encoding"))
        self.assertEqual(body, data)

    @asynctest
    async def test_filelist_pages(self):
        """filelist pages by path with next/after, each page in the documented shape."""
        for name in ("p/c", "p/a", "p/b", "q/z"):
            await self.upload(name, name.encode())
        first = await self.checked("GET", "filelist", 200,
                                   params={"sid": "files", "prefix": "p/", "limit": "2"})
        self.assertEqual([f["path"] for f in first["files"]], ["p/a", "p/b"])
        self.assertEqual(first["next"], "p/b")
        second = await self.checked("GET", "filelist", 200, params={
            "sid": "files", "prefix": "p/", "limit": "2", "after": first["next"]})
        self.assertEqual([f["path"] for f in second["files"]], ["p/c"])
        self.assertIsNone(second["next"])
        self.assertEqual(second["files"][0]["size"], 3)

    @asynctest
    async def test_versions_and_delete(self):
        """deletefile (DELETE and POST) and versionlist answer the documented shapes."""
        one = await self.upload("v.txt", b"one")
        two = await self.upload("v.txt", b"two")
        deleted = await self.checked("DELETE", "deletefile", 200,
                                     params={"sid": "files", "path": "v.txt"})
        self.assertEqual((deleted["path"], deleted["deleted"]), ("v.txt", True))
        listed = await self.checked("GET", "versionlist", 200,
                                    params={"sid": "files", "path": "v.txt"})
        self.assertEqual([(v["version"], v["deleted"], v["current"]) for v in listed["versions"]],
                         [(deleted["version"], True, True), (two["version"], False, False),
                          (one["version"], False, False)])
        response, body = await self.call("GET", "getfile", params={
            "sid": "files", "path": "v.txt", "version": one["version"]})
        self.assertEqual((response.code, body), (200, b"one"))
        value = await self.checked("GET", "getfile", 404, params={"sid": "files", "path": "v.txt"})
        self.assert_error(value, "NoSuchFile")
        await self.upload("w.txt", b"w")
        posted = await self.checked("POST", "deletefile", 200,
                                    params={"sid": "files", "path": "w.txt"})
        self.assertTrue(posted["deleted"])

    @asynctest
    async def test_syncnext(self):
        """syncnext answers the documented change feed, or the documented NotSupported."""
        stored = await self.upload("s.txt", b"sync")
        response, body = await self.call("GET", "syncnext",
                                         params={"sid": "files", "after": "0", "limit": "10"})
        value = json.loads(body)
        validator_for(operation_schema_ref("/syncnext", "get", response.code)).validate(value)
        if response.code == 400:
            self.assert_error(value, "NotSupported")
            return
        self.assertEqual(response.code, 200)
        self.assertEqual(value["last"], value["changes"][-1]["id"])
        change = value["changes"][-1]
        self.assertEqual((change["op"], change["path"], change["version"], change["sha256"]),
                         ("put", "s.txt", stored["version"], stored["sha256"]))

    @asynctest
    async def test_syncnext_long_poll_wakes(self):
        """A syncnext holding with wait returns the change an upload makes meanwhile."""
        response, body = await self.call("GET", "syncnext", params={"sid": "files"})
        if response.code == 400:
            self.assert_error(json.loads(body), "NotSupported")
            return
        last = json.loads(body)["last"]
        waiting = defer.ensureDeferred(self.checked(
            "GET", "syncnext", 200, params={"sid": "files", "after": str(last), "wait": "60"}))
        self.assertNoResult(waiting)
        await self.upload("late.txt", b"late")
        value = await waiting.addTimeout(REQUEST_TIMEOUT, reactor)
        self.assertEqual([c["path"] for c in value["changes"]], ["late.txt"])

    @asynctest
    async def test_flush_on_storage(self):
        """flush on a storage service is the documented NotSupported error."""
        value = await self.checked("POST", "flush", 400, params={"sid": "files"})
        self.assert_error(value, "NotSupported")

    @asynctest
    async def test_reqlist(self):
        """reqlist shows earlier requests newest first and never a key value."""
        await self.checked("GET", "servicelist", 200)
        await self.checked("GET", "filelist", 200, params={"sid": "files"})
        value = await self.checked("GET", "reqlist", 200, params={"sid": "api", "limit": "2"})
        self.assertEqual(len(value["requests"]), 2)
        self.assertTrue(value["requests"][0]["url"].startswith("/filelist?"))
        self.assertEqual(value["requests"][1]["url"], "/servicelist")
        self.assertNotIn(self.writer, json.dumps(value))


class ErrorTests(LiveTests):
    @asynctest
    async def test_key_and_access_errors(self):
        """InvalidKey, AccessDenied and NoSuchService are documented errors."""
        self.assert_error(await self.checked("GET", "servicelist", 401,
                                             key="wrong-secret-0123456789"), "InvalidKey")
        self.assert_error(await self.checked("PUT", "uploadfile", 403, key=self.reader,
                                             params={"sid": "files", "path": "x"}, data=b"x"),
                          "AccessDenied")
        self.assert_error(await self.checked("GET", "filelist", 404, params={"sid": "nosuch"}),
                          "NoSuchService")

    @asynctest
    async def test_parameter_errors(self):
        """Missing, invalid and repeated parameters and bad paths are documented 400s."""
        self.assert_error(await self.checked("GET", "filelist", 400), "MissingParameter")
        self.assert_error(await self.checked("GET", "filelist", 400,
                                             params={"sid": "files", "limit": "0"}),
                          "InvalidParameter")
        self.assert_error(await self.checked("GET", "getfile", 400,
                                             params=[("sid", "files"), ("sid", "files"),
                                                     ("path", "a")]),
                          "InvalidParameter")
        for path in ("a/../b", "./a", "a\x01b", "x" * 1025, ""):
            self.assert_error(await self.checked("GET", "getfile", 400,
                                                 params={"sid": "files", "path": path}),
                              "InvalidPath")

    @asynctest
    async def test_unicode_digit_limit(self):
        """A limit of non-ASCII digits (such as a superscript two) is InvalidParameter."""
        self.assert_error(await self.checked("GET", "filelist", 400,
                                             params={"sid": "files", "limit": "\u00b2"}),
                          "InvalidParameter")


    @asynctest
    async def test_function_not_offered_by_web_service(self):
        """A file function on the api service is NotSupported, as SPEC section 4 says."""
        self.assert_error(await self.checked("GET", "filelist", 400, params={"sid": "api"}),
                          "NotSupported")


    @asynctest
    async def test_file_errors(self):
        """NoSuchFile, NoSuchVersion and BadDigest are documented errors."""
        self.assert_error(await self.checked("GET", "getfile", 404,
                                             params={"sid": "files", "path": "missing"}),
                          "NoSuchFile")
        await self.upload("here.txt", b"here")
        self.assert_error(await self.checked("GET", "getfile", 404, params={
            "sid": "files", "path": "here.txt", "version": "no-such-version"}), "NoSuchVersion")
        self.assert_error(await self.checked("GET", "versionlist", 404,
                                             params={"sid": "files", "path": "missing"}),
                          "NoSuchFile")
        self.assert_error(await self.checked("DELETE", "deletefile", 404,
                                             params={"sid": "files", "path": "missing"}),
                          "NoSuchFile")
        wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        self.assert_error(await self.checked("PUT", "uploadfile", 400,
                                             params={"sid": "files", "path": "d.txt"},
                                             data=b"body", headers={"Content-MD5": wrong}),
                          "BadDigest")
        value = await self.checked("GET", "filelist", 200, params={"sid": "files"})
        self.assertEqual([f["path"] for f in value["files"]], ["here.txt"])

    @asynctest
    async def test_function_and_method_errors(self):
        """NoSuchFunction and MethodNotAllowed have the documented component shapes."""
        response, body = await self.call("GET", "nosuch")
        self.assertEqual(response.code, 404)
        value = json.loads(body)
        validator_for("#/components/responses/NotFound/content/application~1json/schema"
                      ).validate(value)
        self.assert_error(value, "NoSuchFunction")
        response, body = await self.call("GET", "flush", params={"sid": "files"})
        self.assertEqual(response.code, 405)
        self.assertEqual(self.header(response, "Allow"), "POST")
        value = json.loads(body)
        validator_for("#/components/responses/MethodNotAllowed/content/application~1json/schema"
                      ).validate(value)
        self.assert_error(value, "MethodNotAllowed")


class TooLargeTests(LiveTests):
    top = {"maxUploadSize": 1000}

    @asynctest
    async def test_too_large(self):
        """A body over maxUploadSize is the documented TooLarge error, and nothing is stored."""
        self.assert_error(await self.checked("PUT", "uploadfile", 413,
                                             params={"sid": "files", "path": "big"},
                                             data=os.urandom(1001)),
                          "TooLarge")
        value = await self.checked("GET", "filelist", 200, params={"sid": "files"})
        self.assertEqual(value["files"], [])


class ReplicaTests(LiveTests):
    services = [
        {"id": "api", "type": "api"},
        {"id": "files", "type": "storage"},
        {"id": "copy", "type": "storage", "replica": {"source": "nowhere", "sid": "files"}},
    ]
    # A primary that never answers: the replica stays read-only and empty.
    top = {"replicationSources": [{"id": "nowhere", "url": "http://127.0.0.1:9/",
                                   "key": "nowhere-secret-0123456789"}]}

    @asynctest
    async def test_read_only_replica(self):
        """Writing to a replica is the documented ReadOnlyReplica error."""
        self.assert_error(await self.checked("PUT", "uploadfile", 409,
                                             params={"sid": "copy", "path": "x"}, data=b"x"),
                          "ReadOnlyReplica")
        self.assert_error(await self.checked("DELETE", "deletefile", 409,
                                             params={"sid": "copy", "path": "x"}),
                          "ReadOnlyReplica")
