"""
Standard mode's front door: keys, functions, methods, parameters,
access levels, servicelist, reqlist, CORS and mode dispatch.
"""

from pathlib import Path

import treq
from twisted.trial.unittest import TestCase

from tests.util import asynctest
from tests.webserver import READER, WRITER, WebFront, base_config


ROOT = Path(__file__).resolve().parent.parent
LIMITED = "limited-secret-0123456789"
PUBLIC_SERVICE = {"id": "www", "type": "public", "source": "files"}


class FrontDoorTests(TestCase):
    def setUp(self):
        raw = base_config(
            services=[{"id": "files", "type": "filesystem", "directory": "/nonexistent"},
                      {"id": "other", "type": "filesystem", "directory": "/nonexistent"},
                      PUBLIC_SERVICE],
            keys=[{"id": "LIMITED", "value": LIMITED, "access": {"files": "read", "other": "none"}}],
        )
        self.front = WebFront(self, raw)

    @asynctest
    async def test_invalid_key(self):
        """A wrong key value gets InvalidKey with status 401."""
        status, body = await self.front.json("GET", "servicelist", key="wrong-secret-0123456789")
        self.assertEqual((status, body["error"]["code"]), (401, "InvalidKey"))

    @asynctest
    async def test_empty_key(self):
        """An empty x-owncdn-key header is still standard mode, and invalid."""
        status, body = await self.front.json("GET", "servicelist", key="")
        self.assertEqual((status, body["error"]["code"]), (401, "InvalidKey"))

    @asynctest
    async def test_unknown_function(self):
        """An unknown function gets NoSuchFunction with status 404."""
        status, body = await self.front.json("GET", "nosuch")
        self.assertEqual((status, body["error"]["code"]), (404, "NoSuchFunction"))

    @asynctest
    async def test_wrong_method(self):
        """A method the function does not take gets 405 with an Allow header."""
        response = await self.front.call("DELETE", "servicelist")
        body = await response.json()
        self.assertEqual((response.code, body["error"]["code"]), (405, "MethodNotAllowed"))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])

    @asynctest
    async def test_missing_sid(self):
        """A function that needs sid gets MissingParameter without it."""
        status, body = await self.front.json("GET", "filelist")
        self.assertEqual((status, body["error"]["code"]), (400, "MissingParameter"))

    @asynctest
    async def test_repeated_parameter(self):
        """A parameter given twice gets InvalidParameter."""
        status, body = await self.front.json("GET", "filelist?sid=files&sid=other")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_non_utf8_parameter(self):
        """A parameter that is not UTF-8 gets InvalidParameter, not a 500."""
        status, body = await self.front.json("GET", "filelist?sid=%ff%fe")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_no_such_service(self):
        """An unknown sid gets NoSuchService with status 404."""
        status, body = await self.front.json("GET", "filelist?sid=nope")
        self.assertEqual((status, body["error"]["code"]), (404, "NoSuchService"))

    @asynctest
    async def test_access_none(self):
        """A key with access none on a service gets AccessDenied (403)."""
        status, body = await self.front.json("GET", "reqlist?sid=api", key=LIMITED)
        self.assertEqual((status, body["error"]["code"]), (403, "AccessDenied"))

    @asynctest
    async def test_read_key_cannot_write(self):
        """A read key gets AccessDenied for uploadfile."""
        status, body = await self.front.json("PUT", "uploadfile?sid=files&path=a.txt",
                                             key=READER, data=b"x")
        self.assertEqual((status, body["error"]["code"]), (403, "AccessDenied"))

    @asynctest
    async def test_servicelist_shows_only_readable(self):
        """servicelist lists exactly the services the key can read, with its access."""
        status, body = await self.front.json("GET", "servicelist", key=LIMITED)
        self.assertEqual(status, 200)
        self.assertEqual(body, {"services": [
            {"id": "files", "name": "files", "type": "filesystem", "access": "read"}]})
        status, body = await self.front.json("GET", "servicelist", key=WRITER)
        self.assertEqual([s["id"] for s in body["services"]], ["api", "files", "other", "www"])
        self.assertEqual({s["access"] for s in body["services"]}, {"write"})

    @asynctest
    async def test_reqlist_never_shows_key(self):
        """reqlist shows the newest requests first and never a key value."""
        await self.front.json("GET", "servicelist")
        await self.front.json("GET", "nosuch")
        status, body = await self.front.json("GET", "reqlist?sid=api&limit=2")
        self.assertEqual(status, 200)
        self.assertEqual([(r["url"], r["status"]) for r in body["requests"]],
                         [("/nosuch", 404), ("/servicelist", 200)])
        self.assertEqual(set(body["requests"][0]),
                         {"time", "remote", "method", "url", "status", "bytes", "ms"})
        self.assertEqual(body["requests"][0]["remote"], "127.0.0.1")
        self.assertNotIn(WRITER, str(body))

    @asynctest
    async def test_reqlist_limit_out_of_range(self):
        """reqlist with limit over 100 gets InvalidParameter."""
        status, body = await self.front.json("GET", "reqlist?sid=api&limit=101")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_reqlist_on_file_service(self):
        """reqlist on a service that is not api or public gets NotSupported."""
        status, body = await self.front.json("GET", "reqlist?sid=files")
        self.assertEqual((status, body["error"]["code"]), (400, "NotSupported"))

    @asynctest
    async def test_openapi_document(self):
        """GET /openapi.json with a valid key serves the document in docs/."""
        response = await self.front.call("GET", "openapi.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), (ROOT / "docs" / "openapi.json").read_bytes())

    @asynctest
    async def test_s3_mode_chosen_by_amz_header(self):
        """Any x-amz-* header selects S3 mode, which answers S3 XML."""
        response = await treq.get(self.front.url + "/bucket/key",
                                  headers={"x-amz-date": "20260101T000000Z"}, persistent=False)
        self.assertTrue(response.headers.hasHeader("x-amz-request-id"))
        self.assertIn(b"<Error><Code>", await response.content())

    @asynctest
    async def test_unmatched_request_is_404(self):
        """A request with no key, no x-amz header and no matching binding gets 404."""
        front = WebFront(self, base_config())
        response = await treq.get(front.url + "/anything", persistent=False)
        self.assertEqual(response.code, 404)
        await response.content()


class ApiBindingTests(TestCase):
    @asynctest
    async def test_api_port_setting_is_honoured(self):
        """An api service bound to another port does not answer on this one."""
        raw = base_config()
        raw["services"][0]["port"] = 1
        front = WebFront(self, raw)
        response = await front.call("GET", "servicelist")
        self.assertEqual(response.code, 404)
        await response.content()

    @asynctest
    async def test_api_host_setting_is_honoured(self):
        """An api service bound to a host name answers only for that Host."""
        raw = base_config()
        raw["services"][0]["host"] = "api.example"
        front = WebFront(self, raw)
        response = await front.call("GET", "servicelist")
        self.assertEqual(response.code, 404)
        await response.content()
        status, body = await front.json("GET", "servicelist", headers={"host": "API.example:80"})
        self.assertEqual(status, 200)

    @asynctest
    async def test_cors_preflight_and_headers(self):
        """With cors on, preflights are answered and responses allow any origin."""
        raw = base_config()
        raw["services"][0]["cors"] = True
        front = WebFront(self, raw)
        response = await treq.request("OPTIONS", front.url + "/servicelist", headers={
            "origin": "https://app.example", "access-control-request-method": "GET",
            "access-control-request-headers": "x-owncdn-key"}, persistent=False)
        await response.content()
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-headers"),
                         ["x-owncdn-key"])
        response = await front.call("GET", "servicelist")
        await response.content()
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])

    @asynctest
    async def test_no_cors_by_default(self):
        """With cors off, responses carry no CORS headers and preflights are not answered."""
        front = WebFront(self, base_config())
        response = await front.call("GET", "servicelist")
        await response.content()
        self.assertFalse(response.headers.hasHeader("access-control-allow-origin"))
        response = await treq.request("OPTIONS", front.url + "/servicelist", headers={
            "access-control-request-method": "GET",
            "access-control-request-headers": "x-owncdn-key"}, persistent=False)
        await response.content()
        self.assertEqual(response.code, 404)
