"""
The base of every leaf resource that answers asynchronously.

C{render} starts the C{async def handle} coroutine, returns
C{NOT_DONE_YET}, and cancels the coroutine when the client goes away;
errors become the mode's own error response, never a traceback.  An
answer that needs no waiting (a memory-cache hit, a small file the
storage service holds in memory) is given without any Deferred.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from owncdn.errors import OwnCDNError
from owncdn.web.site import loggable

log = Logger()


class AsyncResource(Resource):
    isLeaf = True

    def render(self, request):
        running = self._run(request)
        try:
            # Run it until it first waits: everything it awaits until
            # then has fired already.
            running.send(None)
        except StopIteration:
            return NOT_DONE_YET
        # It waits for a Deferred: from here on Twisted drives it, and
        # resuming it first hands that same Deferred back.
        d = defer.Deferred.fromCoroutine(running)
        if not d.called:
            request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    async def _run(self, request):
        try:
            await self.handle(request)
        except defer.CancelledError:
            return
        except OwnCDNError as error:
            if not request.finished and not request._disconnected:
                self.send_error(request, error)
        except Exception:
            log.failure("error answering {method} {path!r}",
                        method=request.method, path=loggable(request.uri))
            if not request.finished and not request._disconnected:
                if request.startedWriting:
                    request.channel.transport.abortConnection()
                else:
                    self.send_error(request, OwnCDNError("internal error"))

    async def handle(self, request) -> None:
        raise NotImplementedError

    def send_error(self, request, error: OwnCDNError) -> None:
        raise NotImplementedError
