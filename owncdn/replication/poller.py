"""
The replica side of live replication: a service that long-polls
C{syncnext} on the primary and applies every change, in order.

Downloads of several puts run at once, and each change is handed to the
storage service as soon as it and every change before it are there,
without waiting for the ones before to commit: the service commits the
changes waiting together (group commit), which is what makes catch-up
fast.  Changes are still applied strictly in ID order, each committed
together with the replica's last applied ID, so a crash at any point
resumes exactly where it stopped, and a change that fails stops the ones
queued behind it (each names the change it must follow).  Every failure
is retried with capped exponential backoff and recorded in
L{ReplicaStatus}, except a changed source database (C{dbid}), which
stops the poller until an operator resyncs.
"""

import json
import time
from datetime import datetime
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from owncdn.config import ReplicationSource
from owncdn.interfaces import Change
from owncdn.replication.source import SourceClient, SyncError
from owncdn.replication.status import ReplicaStatus, write_status

log = Logger()

# As many changes as one syncnext answers (the primary keeps the last
# 1,000 in memory): a replica catching up asks once per thousand.
BATCH = 1000
WAIT = 30
# Downloads at once, and changes between the start of their download
# and their commit.  The window spans a few of the storage service's
# batches (64 writes), so that the next batch downloads while one
# commits; at most WINDOW bodies of up to MEMORY_BODY wait in memory.
CONCURRENCY = 16
WINDOW = 256
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0

__all__ = ["ReplicaPoller", "SourceReplaced", "SyncError"]


class SourceReplaced(Exception):
    """
    The source's database is not the one this replica copied: applying
    its changes would mix two histories.
    """


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def change_from_json(item: dict) -> Change:
    try:
        metadata = item.get("metadata") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata must map strings to strings")
        return Change(
            id=int(item["id"]), time=parse_time(item["time"]), op=item["op"],
            path=item["path"], version=item["version"], size=int(item.get("size") or 0),
            etag=item.get("etag") or "", sha256=item.get("sha256"),
            content_type=item.get("contentType") or "application/octet-stream",
            metadata=metadata,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SyncError(f"syncnext sent a malformed change: {e}") from None


class ReplicaPoller(Service):
    """
    Keeps one replica storage service up to date with its source.

    @param target: the replica storage service; it offers
        C{last_applied_id()}, C{source_dbid()} and
        C{apply_change(change, body, source_dbid, after=...)}.
    @param agent: the L{IAgent} to talk to the source with; by default
        one of its own with a connection for the long poll and for each
        concurrent download (L{SourceClient}).
    """

    def __init__(self, target, source: ReplicationSource, remote_sid: str, reactor,
                 spool_dir: Path, agent: IAgent | None = None, wait: int = WAIT,
                 batch: int = BATCH, concurrency: int = CONCURRENCY, window: int = WINDOW,
                 status_path: Path | None = None):
        self.target = target
        self.remote_sid = remote_sid
        self.reactor = reactor
        self.client = SourceClient(source, remote_sid, reactor, spool_dir, agent,
                                   connections=concurrency + 1)
        self.wait = wait
        self.batch = batch
        self.concurrency = concurrency
        self.window = window
        self.status = ReplicaStatus(source.id, remote_sid)
        self.status_path = status_path
        self._status_writing = False
        self._status_dirty = False
        self.synced = defer.Deferred()  # replaced after each successful attempt
        self._loop: defer.Deferred | None = None
        self._backoff: defer.Deferred | None = None

    @property
    def source(self) -> ReplicationSource:
        return self.client.source

    @source.setter
    def source(self, source: ReplicationSource) -> None:
        self.client.source = source

    def update_source(self, source: ReplicationSource) -> None:
        """
        Use a reloaded source (new URL or key) from the next request on,
        and cut a backoff short so that it is tried at once.
        """
        self.source = source
        if self._backoff is not None:
            self._backoff.cancel()

    def startService(self):
        super().startService()
        self.status.last_applied = self.target.last_applied_id()
        self._loop = defer.Deferred.fromCoroutine(self._run())

    def stopService(self):
        super().stopService()
        stopped = defer.succeed(None)
        if self._loop is not None:
            self._loop.cancel()
            stopped = self._loop.addErrback(lambda f: f.trap(defer.CancelledError))
        stopped.addCallback(lambda _: self.client.close())
        return stopped

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while self.running:
            self.status.last_attempt = time.time()
            try:
                applied = await self.sync_once()
            except defer.CancelledError:
                raise
            except SourceReplaced as e:
                self._record("stopped", str(e))
                log.error("replica {sid} stopped: {reason}", sid=self.remote_sid, reason=str(e))
                return
            except Exception as e:
                if not self.running:
                    return
                self.status.failures += 1
                self._record("retrying", f"{type(e).__name__}: {e}")
                log.warn("replica of {source}/{sid}: {error}; retrying in {delay}s",
                         source=self.source.id, sid=self.remote_sid, error=str(e), delay=backoff)
                self._backoff = task.deferLater(self.reactor, backoff)
                try:
                    await self._backoff
                except defer.CancelledError:
                    if not self.running:
                        raise
                    backoff = FIRST_BACKOFF  # a new source: try it at once
                    continue
                finally:
                    self._backoff = None
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            self.status.last_success = self.status.last_attempt
            self._record("ok", f"applied {applied} changes")

    def _record(self, state: str, result: str) -> None:
        self.status.state = state
        self.status.last_result = result
        self.status.last_applied = self.target.last_applied_id()
        self._save_status()
        synced, self.synced = self.synced, defer.Deferred()
        synced.callback(self.status)

    def _save_status(self) -> None:
        """
        Write the status for C{owncdn status} off the reactor thread, one
        write at a time; a change during a write is written after it.
        """
        if self.status_path is None:
            return
        if self._status_writing:
            self._status_dirty = True
            return
        self._status_writing = True
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      write_status, self.status_path, self.status.as_json())

        def written(_):
            self._status_writing = False
            if self._status_dirty:
                self._status_dirty = False
                self._save_status()

        d.addErrback(lambda f: log.failure("could not save the replica status", f))
        d.addCallback(written)

    async def sync_once(self) -> int:
        """
        One long poll and the application of what it brought.

        @return: how many changes were applied.
        """
        after = self.target.last_applied_id()
        body = await self.client.syncnext(after, self.batch, self.wait)
        try:
            answer = json.loads(body)
            dbid, last, items = answer["dbid"], int(answer["last"]), answer["changes"]
        except (ValueError, KeyError, TypeError):
            raise SyncError("syncnext answered malformed JSON") from None
        known = self.target.source_dbid()
        if known is not None and known != dbid:
            raise SourceReplaced(
                f"the source database changed (dbid {known} became {dbid}): "
                f"run 'owncdn replica resync' to copy it again")
        self.status.source_last = last
        changes = [change_from_json(item) for item in items]
        if any(c.id <= after for c in changes):
            raise SyncError("syncnext answered changes the replica already has")
        await _Batch(self, changes, dbid, after).run()
        return len(changes)


class _Batch:
    """
    The changes of one syncnext answer on their way to the target: up to
    C{concurrency} downloads at once, at most C{window} changes between
    the start of their download and the target's answer, and each change
    handed to the target, naming the change it follows, as soon as it
    and every change before it are there.

    A failed download stops the batch at its change: the changes before
    it are still handed over, the downloads after it are dropped.  A
    change the target refuses stops the handing over (the ones already
    handed behind it fail too, since they no longer follow the last
    applied change).  L{run}'s Deferred fires once every change handed
    over is answered: with the target's first refusal, else the failed
    download, if any.
    """

    def __init__(self, poller: ReplicaPoller, changes: list[Change], dbid: str, after: int):
        self.poller = poller
        self.changes = changes
        self.dbid = dbid
        self.after = after
        self.bodies: list = [None] * len(changes)
        self.ready = [False] * len(changes)
        self.downloads: dict[int, defer.Deferred] = {}
        self.started = 0  # changes whose download has started (or that have none)
        self.handed = 0
        self.answered = 0
        self.end = len(changes)  # the first change not to hand over
        self.failed_download: Failure | None = None
        self.refused: Failure | None = None
        self.done = defer.Deferred(self._cancel)
        self._pumping = False
        self._again = False

    def run(self) -> defer.Deferred:
        self._pump()
        return self.done

    def _pump(self) -> None:
        # Re-entered from the callbacks of what it starts (a download or
        # an apply may answer at once): the outer call loops instead.
        self._again = True
        if self._pumping:
            return
        self._pumping = True
        poller = self.poller
        while self._again:
            self._again = False
            while self.handed < self.end and self.ready[self.handed]:
                self._hand()
            while (self.started < self.end and len(self.downloads) < poller.concurrency
                   and self.started - self.answered < poller.window):
                self._start()
        self._pumping = False
        if self.answered == self.handed == self.end and not self.done.called:
            if self.refused is not None or self.failed_download is not None:
                self.done.errback(self.refused or self.failed_download)
            else:
                self.done.callback(None)

    def _start(self) -> None:
        index = self.started
        self.started += 1
        change = self.changes[index]
        if change.op != "put":
            self.ready[index] = True
            self._again = True
            return
        d = self.poller.client.getfile(change)
        self.downloads[index] = d
        d.addCallbacks(self._downloaded, self._not_downloaded,
                       callbackArgs=(index,), errbackArgs=(index,))

    def _downloaded(self, body, index: int) -> None:
        del self.downloads[index]
        if index >= self.end:
            if body is not None:
                self.poller.client.release(body)
            return
        self.bodies[index] = body
        self.ready[index] = True
        self._pump()

    def _not_downloaded(self, failure: Failure, index: int) -> None:
        del self.downloads[index]
        if index < self.end:
            self.failed_download = failure
            self._stop_at(index)
            self._pump()

    def _hand(self) -> None:
        index = self.handed
        self.handed += 1
        change = self.changes[index]
        d = self.poller.target.apply_change(change, self.bodies[index], self.dbid,
                                            after=self.after)
        self.after = change.id
        d.addBoth(self._answered, index)

    def _answered(self, result, index: int) -> None:
        self.answered += 1
        body, self.bodies[index] = self.bodies[index], None
        if body is not None:
            self.poller.client.release(body)
        if isinstance(result, Failure) and self.refused is None:
            self.refused = result
            self._stop_at(self.handed)
        self._pump()

    def _stop_at(self, index: int) -> None:
        """
        Hand over nothing from C{index} on: drop its downloads and the
        bodies downloaded for it.
        """
        self.end = index
        for later in [i for i in self.downloads if i >= index]:
            self.downloads[later].cancel()
        for later in range(index, self.started):
            body, self.bodies[later] = self.bodies[later], None
            if body is not None:
                self.poller.client.release(body)

    def _cancel(self, _) -> None:
        # The poller stops: what was handed over still commits.
        self._stop_at(self.handed)
