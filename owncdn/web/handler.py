"""
The base of every leaf resource that answers asynchronously.

C{render} starts the C{async def handle} coroutine, returns
C{NOT_DONE_YET}, and cancels the coroutine when the client goes away;
errors become the mode's own error response, never a traceback.  An
answer that needs no waiting (a memory-cache hit, a small file the
storage service holds in memory) is given without any Deferred.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
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
        except Exception as error:
            self.answer_error(request, error)

    def answer_error(self, request, error: Exception, failure: Failure | None = None) -> None:
        """
        Answer C{request} for C{error}, raised while answering it: a
        refusal (L{OwnCDNError}) with the mode's error response, anything
        else logged (with C{failure}, when the error came as one) and
        answered as an internal error, or the connection cut when part of
        the response is out.  Nothing once the client has gone.
        """
        if not isinstance(error, OwnCDNError):
            log.failure("error answering {method} {path!r}", failure or Failure(error),
                        method=request.method, path=loggable(request.uri))
        if request.finished or request._disconnected:
            return
        if isinstance(error, OwnCDNError):
            self.send_error(request, error)
        elif request.startedWriting:
            request.channel.transport.abortConnection()
        else:
            self.send_error(request, OwnCDNError("internal error"))

    def answer_when(self, request, d: defer.Deferred, answer: Callable[[Any], object]) -> None:
        """
        Have C{answer(result)} answer C{request} once C{d} fires with its
        result, and its failure answered as L{handle}'s errors are: for
        a handler whose last step waits, which then returns without
        awaiting (a coroutine that waits costs Twisted's coroutine
        machinery, and a watch for the client going away).  A client
        that has gone by then gets no answer, as a handler awaiting
        C{d} would have been cancelled.
        """
        d.addCallbacks(self._answer_result, self._answer_failure,
                       callbackArgs=(request, answer), errbackArgs=(request,))

    def _answer_result(self, result, request, answer: Callable[[Any], object]) -> None:
        if request.finished or request._disconnected:
            return
        try:
            answer(result)
        except Exception as error:
            self.answer_error(request, error)

    def _answer_failure(self, failure: Failure, request) -> None:
        if not failure.check(defer.CancelledError):
            self.answer_error(request, failure.value, failure)

    async def handle(self, request) -> None:
        raise NotImplementedError

    def send_error(self, request, error: OwnCDNError) -> None:
        raise NotImplementedError
