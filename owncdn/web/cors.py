"""
CORS preflight answers, for the api service and public bindings that
have C{cors} on.
"""

from twisted.web.resource import Resource

MAX_AGE = b"86400"


def answer_preflight(request, methods: bytes) -> bytes:
    request.setResponseCode(204)
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", methods)
    asked = request.getHeader(b"access-control-request-headers")
    if asked:
        request.setHeader(b"access-control-allow-headers", asked)
    request.setHeader(b"access-control-max-age", MAX_AGE)
    return b""


class Preflight(Resource):
    isLeaf = True

    def __init__(self, methods: bytes, logged_service: str):
        super().__init__()
        self.methods = methods
        self.logged_service = logged_service

    def render(self, request):
        request.logged_service = self.logged_service
        return answer_preflight(request, self.methods)
