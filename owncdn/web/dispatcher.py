"""
The root resource: picks standard mode, S3 mode or a public binding
from the request, the way C{twisted.web.vhost.NameVirtualHost} picks a
virtual host.
"""

from twisted.web.resource import NoResource, Resource
from zope.interface import implementer

from owncdn.web.cors import Preflight
from owncdn.web.public import PublicBinding, matches_host_port
from owncdn.web.s3 import S3API
from owncdn.web.site import IEarlyRefusal, IUploadStaging, is_s3_request
from owncdn.web.standard import StandardAPI


@implementer(IEarlyRefusal, IUploadStaging)
class Dispatcher(Resource):
    """
    Every child is a leaf that reads the whole C{request.path}, so the
    segment Twisted already moved to C{prepath} is put back first.

    S3 requests with a large body have their signature checked as soon
    as their head is in (L{refuse_early}).
    """

    def __init__(self, state):
        super().__init__()
        config = state.config
        api = config.service("api").options
        self.api_host, self.api_port = api["host"], api["port"]
        self.api_cors = api["cors"]
        self.standard = StandardAPI(state, cors=self.api_cors)
        self.s3 = S3API(state)
        self.preflight = Preflight(b"GET, HEAD, PUT, POST, DELETE, OPTIONS", "api")
        self.public = [PublicBinding(s, state) for s in config.services if s.type == "public"]
        self.not_found = NoResource("No such resource.")

    def _is_api_preflight(self, request) -> bool:
        if not self.api_cors or request.method != b"OPTIONS":
            return False
        asked = (request.getHeader(b"access-control-request-headers") or b"").lower()
        return b"x-owncdn-key" in asked or b"x-amz-" in asked or b"authorization" in asked

    def _api_child(self, request):
        """
        The child that answers a request on the api host and port, if any.
        """
        if matches_host_port(request, self.api_host, self.api_port):
            # Names are stored in their canonical form (the channel).
            if b"X-Owncdn-Key" in request.requestHeaders._rawHeaders:
                return self.standard
            if is_s3_request(request):
                return self.s3
            if self._is_api_preflight(request):
                return self.preflight
        return None

    def refuse_early(self, request, method: bytes, target: bytes) -> bytes | None:
        if self._api_child(request) is self.s3:
            return self.s3.refuse_early(request, method, target)
        return None

    def stage_body(self, request, method: bytes, target: bytes, length: int):
        child = self._api_child(request)
        if child is self.s3 or child is self.standard:
            return child.stage_body(request, method, target, length)
        return None

    def getChildWithDefault(self, path, request):
        request.postpath.insert(0, request.prepath.pop())
        child = self._api_child(request)
        if child is not None:
            return child
        for binding in self.public:
            if binding.matches(request):
                return binding
        return self.not_found
