"""
S3 mode, chosen by any C{x-amz-*} request header.

Until the S3 actions land every request gets the S3 XML
C{NotImplemented} error, with the C{x-amz-request-id} every S3 response
carries, so S3 clients fail with a clear message instead of a hang.
"""

import secrets
from xml.sax.saxutils import escape

from twisted.web.resource import Resource


def error_document(code: str, message: str, request_id: str, resource: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


class S3API(Resource):
    isLeaf = True

    def __init__(self, state):
        super().__init__()
        self.state = state

    def render(self, request):
        request.logged_service = "api"
        request_id = secrets.token_hex(8).upper()
        request.setHeader(b"x-amz-request-id", request_id.encode())
        request.setResponseCode(501)
        request.setHeader(b"content-type", b"application/xml")
        body = error_document("NotImplemented", "S3 mode is not available yet",
                              request_id, request.path.decode("utf-8", "replace"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body
