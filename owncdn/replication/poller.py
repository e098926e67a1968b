"""
The replica side of live replication: a service that long-polls
C{syncnext} on the primary and applies every change, in order.

Downloads of several puts run at once, and each change is handed to the
storage service as soon as it and every change before it are there,
without waiting for the ones before to commit: the service commits the
changes waiting together (group commit), which is what makes catch-up
fast.  Changes are still applied strictly in ID order, each in one
savepoint with the replica's last applied ID, so a crash at any point
resumes exactly where it stopped, and a change that fails stops the ones
queued behind it (each names the change it must follow).  Every failure is retried with capped exponential backoff and
recorded in L{ReplicaStatus}, except a changed source database (C{dbid}),
which stops the poller until an operator resyncs.
"""

import hashlib
import io
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import treq
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from owncdn.config import ReplicationSource
from owncdn.interfaces import Change
from owncdn.replication.status import ReplicaStatus, write_status

log = Logger()

# As many changes as one syncnext answers (the primary keeps the last
# 1,000 in memory): a replica catching up asks once per thousand.
BATCH = 1000
WAIT = 30
# Downloads at once, and changes between the start of their download
# and their commit: the writer commits up to WINDOW changes together.
CONCURRENCY = 8
WINDOW = 64
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
CONNECT_SLACK = 15
# Bodies up to this size are downloaded into memory: creating a spool
# file costs more than the rest of a small change.  At most WINDOW of
# them wait to be applied at a time.
MEMORY_BODY = 64 * 1024


class SyncError(Exception):
    """
    One sync attempt failed; it will be retried.
    """


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
    @param http: the treq-like client to talk to the source with; by
        default one of its own, whose connection pool keeps a connection
        for the long poll and for each concurrent download (treq's
        shared pool keeps two per host, so most downloads would each
        open, and the source accept, a new TCP connection).
    """

    def __init__(self, target, source: ReplicationSource, remote_sid: str, reactor,
                 spool_dir: Path, http=None, wait: int = WAIT, batch: int = BATCH,
                 concurrency: int = CONCURRENCY, window: int = WINDOW,
                 status_path: Path | None = None):
        self.target = target
        self.source = source
        self.remote_sid = remote_sid
        self.reactor = reactor
        self.spool_dir = Path(spool_dir)
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = concurrency + 1
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self.http = http
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
        if self._pool is not None:
            stopped.addCallback(lambda _: self._pool.closeCachedConnections())
        return stopped

    def _url(self, function: str) -> str:
        return self.source.url.rstrip("/") + "/" + function

    @property
    def _headers(self) -> dict:
        return {"x-owncdn-key": self.source.key}

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
        params = {"sid": self.remote_sid, "after": str(after), "limit": str(self.batch),
                  "wait": str(self.wait)}
        response = await self.http.get(self._url("syncnext"), params=params,
                                       headers=self._headers, timeout=self.wait + CONNECT_SLACK)
        body = await response.content()
        if response.code != 200:
            raise SyncError(f"syncnext answered {response.code}: {body[:200]!r}")
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
        await self._apply(changes, dbid, after)
        return len(changes)

    async def _apply(self, changes: list[Change], dbid: str, after: int) -> None:
        """
        Download the puts' bodies and queue each change, in order, with
        the target as soon as its body is there.  A failed download
        stops the queueing at its change; what was queued before it
        still commits.  Returns (or raises the first failure) once every
        queued change is answered.
        """
        limiter = defer.DeferredSemaphore(self.concurrency)
        window = defer.DeferredSemaphore(self.window)
        fetches = [defer.Deferred.fromCoroutine(self._fetch(c, window, limiter))
                   for c in changes]
        applying: list[defer.Deferred] = []
        stopped_by = None
        try:
            for change, fetch in zip(changes, fetches):
                body = await fetch
                d = self.target.apply_change(change, body, dbid, after=after)
                d.addBoth(self._applied, body, window)
                applying.append(d)
                after = change.id
        except Exception as e:
            stopped_by = e
        finally:
            for fetch in fetches[len(applying):]:
                fetch.cancel()
                fetch.addBoth(_close)
        outcomes = await defer.DeferredList(applying, consumeErrors=True)
        for success, result in outcomes:
            if not success:
                result.raiseException()
        if stopped_by is not None:
            raise stopped_by

    async def _fetch(self, change: Change, window: defer.DeferredSemaphore,
                     limiter: defer.DeferredSemaphore):
        """
        Take a place in the window (released once the change is
        applied), then download the body of a put.
        """
        await window.acquire()
        try:
            if change.op != "put":
                return None
            return await limiter.run(self._download_guarded, change)
        except BaseException:
            window.release()
            raise

    @staticmethod
    def _applied(result, body, window: defer.DeferredSemaphore):
        if body is not None:
            body.close()
        window.release()
        return result

    def _download_guarded(self, change: Change) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._download(change))

    async def _pruned_on_source(self, response) -> bool:
        """
        Whether a 404 says the source no longer keeps this version
        (C{keepVersions} pruned it): the change is then applied without
        content, as the source itself records it.
        """
        try:
            answer = json.loads(await response.content())
            return answer["error"]["code"] == "NoSuchVersion"
        except (ValueError, KeyError, TypeError):
            return False

    async def _download(self, change: Change):
        """
        Fetch the bytes of one put into a spool file (small ones into
        memory), checking SHA-256.

        @return: the open spool file, positioned at 0, or C{None} when
            the source has pruned the version.
        """
        params = {"sid": self.remote_sid, "path": change.path, "version": change.version}
        response = await self.http.get(self._url("getfile"), params=params,
                                       headers=self._headers, unbuffered=True,
                                       timeout=CONNECT_SLACK)
        if response.code == 404 and await self._pruned_on_source(response):
            return None
        if response.code != 200:
            await response.content()
            raise SyncError(f"getfile of {change.path} version {change.version} "
                            f"answered {response.code}")
        if change.size <= MEMORY_BODY:
            spool = io.BytesIO()
        else:
            spool = tempfile.TemporaryFile(dir=self.spool_dir, prefix="replica-")
        digest = hashlib.sha256()
        size = 0

        def write(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > change.size:
                # Stop reading now: a body in memory must not grow past
                # what the change announced.
                raise SyncError(f"{change.path} version {change.version} has more than "
                                f"{change.size} bytes")
            digest.update(data)
            spool.write(data)

        try:
            await treq.collect(response, write)
            if change.sha256 is not None and digest.hexdigest() != change.sha256:
                raise SyncError(f"the bytes of {change.path} version {change.version} "
                                f"do not match their SHA-256")
            if size != change.size:
                raise SyncError(f"{change.path} version {change.version} has {size} bytes, "
                                f"not {change.size}")
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool


def _close(result) -> None:
    # A body downloaded for a change that was never applied.
    if hasattr(result, "close"):
        result.close()
