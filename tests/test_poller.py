"""
The replica poller against a test-double primary (in memory, through
treq's StubTreq): ordering, verification, backoff and the dbid guard.
"""

import hashlib
import json
import os

from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from treq.testing import RequestTraversalAgent

from owncdn.config import ReplicationSource
from owncdn.errors import BadDigest
from owncdn.replication.poller import FIRST_BACKOFF, MAX_BACKOFF, ReplicaPoller
from owncdn.replication.source import CONNECT_SLACK

KEY = "primary-secret-0123456789"


class FakePrimary(Resource):
    """
    A primary's syncnext and getfile, with switches for misbehaviour.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.changes: list[dict] = []
        self.files: dict[tuple[str, str], bytes] = {}
        self.dbid = "db-1"
        self.corrupt = False
        self.fail_with: int | None = None
        self.parked: list = []
        self.requests: list[str] = []
        self.failing_paths: set[str] = set()
        # path -> the bytes sent before the answer stalls (None: not even its head)
        self.stalled: dict[str, bytes | None] = {}
        self.dropped: list[str] = []

    def put(self, path: str, data: bytes):
        cid = len(self.changes) + 1
        version = f"v{cid}"
        self.files[(path, version)] = data
        self.changes.append({
            "id": cid, "time": "2026-11-27T10:00:00.000Z", "op": "put", "path": path,
            "version": version, "size": len(data), "etag": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(), "contentType": "text/plain"})
        self._wake()

    def delete(self, path: str):
        cid = len(self.changes) + 1
        self.changes.append({
            "id": cid, "time": "2026-11-27T10:00:01.000Z", "op": "delete", "path": path,
            "version": f"v{cid}", "size": 0, "etag": "", "sha256": None,
            "contentType": "application/octet-stream"})
        self._wake()

    def _wake(self):
        parked, self.parked = self.parked, []
        for request, after, limit in parked:
            self._answer(request, after, limit)
            request.finish()

    def _answer(self, request, after, limit):
        found = [c for c in self.changes if c["id"] > after][:limit]
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps({"dbid": self.dbid, "last": len(self.changes),
                                  "changes": found}).encode())

    def render_GET(self, request):
        function = request.path.decode().strip("/")
        self.requests.append(function)
        if request.getHeader(b"x-owncdn-key") != KEY.encode():
            request.setResponseCode(401)
            return b"{}"
        if self.fail_with is not None:
            request.setResponseCode(self.fail_with)
            return b"{}"
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if function == "syncnext":
            after, limit = int(args["after"]), int(args["limit"])
            if not any(c["id"] > after for c in self.changes):
                self.parked.append((request, after, limit))
                return NOT_DONE_YET
            self._answer(request, after, limit)
            return b""
        if args["path"] in self.failing_paths:
            request.setResponseCode(500)
            return b"{}"
        data = self.files.get((args["path"], args["version"]))
        if args["path"] in self.stalled:
            sent = self.stalled[args["path"]]
            self.stalled_request = request
            request.notifyFinish().addErrback(lambda _: self.dropped.append(args["path"]))
            if sent is not None:
                request.setHeader(b"content-length", b"%d" % len(data))
                request.write(sent)
            return NOT_DONE_YET
        if data is None:
            request.setResponseCode(404)
            return b'{"error": {"code": "NoSuchVersion", "message": "pruned"}}'
        return data[:-1] + b"!" if self.corrupt and data else data


class ListTarget:
    """
    A replica target that records what it was asked to apply.

    While L{hold} is in effect, changes wait (as in a busy writer
    thread) until L{commit}; each must follow the last applied change
    when it is committed, as in the storage service.
    """

    def __init__(self):
        self.applied: list[tuple] = []
        self.dbid = None
        self.held: list | None = None
        self.refuse: set[int] = set()

    def last_applied_id(self) -> int:
        return self.applied[-1][0].id if self.applied else 0

    def source_dbid(self):
        return self.dbid

    def apply_change(self, change, body, dbid, after=None):
        d = defer.Deferred()
        waiting = (change, body.read() if body is not None else None, dbid, after, d)
        if self.held is None:
            self._commit(*waiting)
        else:
            self.held.append(waiting)
        return d

    def hold(self):
        self.held = []

    def commit(self, count: int | None = None):
        """
        Commit the first C{count} waiting changes (all by default).
        """
        held = self.held or []
        count = len(held) if count is None else count
        self.held = held[count:]
        for waiting in held[:count]:
            self._commit(*waiting)

    def _commit(self, change, data, dbid, after, d):
        if after is not None and after != self.last_applied_id():
            d.errback(ValueError(f"change {change.id} does not follow {self.last_applied_id()}"))
        elif change.id in self.refuse:
            self.refuse.discard(change.id)
            d.errback(BadDigest(f"change {change.id} refused"))
        else:
            self.dbid = dbid
            self.applied.append((change, data))
            d.callback(None)


class PollerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.primary = FakePrimary()
        self.agent = RequestTraversalAgent(self.primary)
        self.target = ListTarget()
        source = ReplicationSource("hq", "HQ", "http://primary.example/", KEY)
        self.poller = ReplicaPoller(self.target, source, "media", self.clock, self.mktemp_dir(),
                                    agent=self.agent, wait=30)

    def mktemp_dir(self):
        import os
        path = self.mktemp()
        os.makedirs(path)
        return path

    def start(self):
        self.poller.startService()
        self.addCleanup(self.stop)
        self.agent.flush()

    def stop(self):
        if self.poller.running:
            self.poller.stopService()
        self.agent.flush()

    def test_applies_changes_in_order_with_exact_bytes(self):
        """Puts and deletes arrive in ID order, with the primary's bytes and versions."""
        self.primary.put("a.txt", b"alpha")
        self.primary.put("b.txt", b"beta" * 1000)
        self.primary.delete("a.txt")
        self.start()
        self.assertEqual([(c.id, c.op, c.path, c.version, data) for c, data in self.target.applied], [
            (1, "put", "a.txt", "v1", b"alpha"),
            (2, "put", "b.txt", "v2", b"beta" * 1000),
            (3, "delete", "a.txt", "v3", None),
        ])
        self.assertEqual(self.target.dbid, "db-1")
        self.assertEqual(self.poller.status.state, "ok")
        self.assertEqual(self.poller.status.last_applied, 3)

    def test_paths_and_versions_reach_the_primary_intact(self):
        """Paths with spaces, reserved URL characters and non-ASCII letters download their own bytes."""
        paths = ["dir/a b+c&d=e?f#g%.txt", "d\u00e9j\u00e0/\u4e2d.txt", "x;y,z@'~.txt"]
        for n, path in enumerate(paths):
            self.primary.put(path, b"body %d" % n)
        self.start()
        self.assertEqual([(c.path, data) for c, data in self.target.applied],
                         [(path, b"body %d" % n) for n, path in enumerate(paths)])

    def test_long_poll_wakes_on_new_change(self):
        """A change made while the replica waits is applied when it arrives."""
        self.start()
        self.assertEqual(self.target.applied, [])
        self.primary.put("late.txt", b"late")
        self.agent.flush()
        self.assertEqual([c.path for c, _ in self.target.applied], ["late.txt"])

    def test_corrupted_bytes_are_refused_and_recorded(self):
        """Bytes that do not match the change's SHA-256 are never applied; the error is recorded."""
        self.primary.put("a.txt", b"alpha")
        self.primary.corrupt = True
        self.start()
        self.assertEqual(self.target.applied, [])
        self.assertEqual(self.poller.status.state, "retrying")
        self.assertIn("SHA-256", self.poller.status.last_result)
        self.primary.corrupt = False
        self.clock.advance(FIRST_BACKOFF)
        self.agent.flush()
        self.assertEqual([data for _, data in self.target.applied], [b"alpha"])
        self.assertEqual(self.poller.status.state, "ok")

    def test_backoff_doubles_and_is_capped(self):
        """Repeated failures wait 0.5, 1, 2 ... seconds, never more than the cap."""
        self.primary.fail_with = 503
        self.start()
        delays = []
        for _ in range(12):
            (call,) = self.clock.getDelayedCalls()
            delay = call.getTime() - self.clock.seconds()
            delays.append(delay)
            self.clock.advance(delay)
            self.agent.flush()
        self.assertEqual(delays[:4], [FIRST_BACKOFF, FIRST_BACKOFF * 2, FIRST_BACKOFF * 4,
                                      FIRST_BACKOFF * 8])
        self.assertEqual(max(delays), MAX_BACKOFF)
        self.assertEqual(self.poller.status.failures, 13)
        self.assertIn("503", self.poller.status.last_result)

    def test_new_source_cuts_backoff_short(self):
        """A reloaded source key is tried at once, not after the running backoff."""
        self.primary.put("a.txt", b"alpha")
        self.poller.source = ReplicationSource("hq", "HQ", "http://primary.example/", "bad-key")
        self.start()
        for _ in range(6):
            (call,) = self.clock.getDelayedCalls()
            self.clock.advance(call.getTime() - self.clock.seconds())
            self.agent.flush()
        self.assertEqual(self.target.applied, [])
        self.poller.update_source(ReplicationSource("hq", "HQ", "http://primary.example/", KEY))
        self.agent.flush()
        self.assertEqual([c.path for c, _ in self.target.applied], ["a.txt"])

    def test_changed_dbid_stops_the_replica(self):
        """A source whose dbid changed is not applied from; the replica stops and says why."""
        self.primary.put("a.txt", b"alpha")
        self.start()
        self.primary.dbid = "db-2"
        self.primary.put("b.txt", b"beta")
        self.agent.flush()
        self.assertEqual([c.path for c, _ in self.target.applied], ["a.txt"])
        self.assertEqual(self.poller.status.state, "stopped")
        self.assertIn("resync", self.poller.status.last_result)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_version_pruned_on_primary_is_applied_without_content(self):
        """A put whose version the primary pruned is applied as such, not retried forever."""
        self.primary.put("old.txt", b"old")
        self.primary.put("new.txt", b"new")
        del self.primary.files[("old.txt", "v1")]
        self.start()
        self.assertEqual([(c.path, data) for c, data in self.target.applied],
                         [("old.txt", None), ("new.txt", b"new")])
        self.assertEqual(self.poller.status.state, "ok")

    def test_stop_leaves_nothing_pending(self):
        """Stopping the poller while it long-polls leaves no timer behind."""
        self.start()
        self.poller.stopService()
        self.agent.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def applied_ids(self) -> list[int]:
        return [c.id for c, _ in self.target.applied]

    def test_changes_queued_without_waiting_for_commits(self):
        """Downloaded changes are all handed over before the first commits, then applied in order."""
        for n in range(5):
            self.primary.put(f"{n}.txt", b"x" * n)
        self.target.hold()
        self.start()
        self.assertEqual([(c.id, after) for c, _, _, after, _ in self.target.held],
                         [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)])
        self.assertEqual(self.target.applied, [])
        self.target.commit()
        self.agent.flush()
        self.assertEqual(self.applied_ids(), [1, 2, 3, 4, 5])
        self.assertEqual([data for _, data in self.target.applied],
                         [b"x" * n for n in range(5)])
        self.assertEqual(self.poller.status.state, "ok")

    def test_window_bounds_changes_in_flight(self):
        """No more than the window's worth of changes is downloaded ahead of the commits."""
        self.poller.window = 2
        for n in range(5):
            self.primary.put(f"{n}.txt", b"data")
        self.target.hold()
        self.start()
        self.assertEqual(len(self.target.held), 2)
        self.target.commit(1)
        self.agent.flush()
        self.assertEqual([c.id for c, *_ in self.target.held], [2, 3])
        while self.target.held:
            self.target.commit()
            self.agent.flush()
        self.assertEqual(self.applied_ids(), [1, 2, 3, 4, 5])

    def test_failed_download_stops_at_its_change(self):
        """A download that fails stops at its change; the retry resumes there, nothing twice."""
        for n in range(1, 5):
            self.primary.put(f"{n}.txt", b"body %d" % n)
        self.primary.failing_paths.add("3.txt")
        self.start()
        self.assertEqual(self.applied_ids(), [1, 2])
        self.assertEqual(self.poller.status.state, "retrying")
        self.assertIn("500", self.poller.status.last_result)
        self.assertEqual(self.poller.status.last_applied, 2)
        self.primary.failing_paths.clear()
        self.clock.advance(FIRST_BACKOFF)
        self.agent.flush()
        self.assertEqual(self.applied_ids(), [1, 2, 3, 4])
        self.assertEqual(self.poller.status.state, "ok")

    def test_failed_apply_stops_the_changes_queued_behind_it(self):
        """A change the target refuses is reported; those queued after it are not applied past the gap."""
        for n in range(1, 5):
            self.primary.put(f"{n}.txt", b"body %d" % n)
        self.target.refuse.add(2)
        self.target.hold()
        self.start()
        self.assertEqual(len(self.target.held), 4)
        self.target.commit()
        self.agent.flush()
        self.assertEqual(self.applied_ids(), [1])
        self.assertEqual(self.poller.status.state, "retrying")
        self.assertIn("BadDigest", self.poller.status.last_result)
        self.target.held = None
        self.clock.advance(FIRST_BACKOFF)
        self.agent.flush()
        self.assertEqual(self.applied_ids(), [1, 2, 3, 4])
        self.assertEqual(self.poller.status.state, "ok")

    def test_download_without_an_answer_times_out(self):
        """A getfile whose answer never comes fails after the timeout, dropping the connection; the retry gets it."""
        self.primary.put("1.txt", b"one")
        self.primary.put("2.txt", b"two")
        self.primary.stalled["2.txt"] = None
        self.start()
        self.clock.advance(CONNECT_SLACK - 0.1)
        self.agent.flush()
        self.assertEqual((self.applied_ids(), self.poller.status.failures), ([1], 0))
        self.clock.advance(0.1)
        self.agent.flush()
        self.assertEqual(self.poller.status.state, "retrying")
        self.assertIn(f"did not answer in {CONNECT_SLACK} s", self.poller.status.last_result)
        self.assertEqual(self.primary.dropped, ["2.txt"])
        del self.primary.stalled["2.txt"]
        self.clock.advance(FIRST_BACKOFF)
        self.agent.flush()
        self.assertEqual(self.applied_ids(), [1, 2])
        self.assertEqual(self.poller.status.state, "ok")

    def test_download_that_stops_arriving_times_out(self):
        """A body that keeps arriving is waited for; one that stops for a timeout's length fails and is dropped."""
        data = b"0123456789" * 1000
        self.primary.put("big.txt", data)
        self.primary.stalled["big.txt"] = data[:1000]
        self.start()
        for piece in (data[1000:2000], data[2000:3000]):
            self.clock.advance(CONNECT_SLACK - 1)
            self.primary.stalled_request.write(piece)
            self.agent.flush()
        self.assertEqual(self.poller.status.failures, 0)
        for _ in range(2):
            self.clock.advance(CONNECT_SLACK)
            self.agent.flush()
        self.assertEqual(self.poller.status.state, "retrying")
        self.assertIn(f"sent nothing for {CONNECT_SLACK} s", self.poller.status.last_result)
        self.assertEqual(self.primary.dropped, ["big.txt"])
        self.assertEqual(self.target.applied, [])
        del self.primary.stalled["big.txt"]
        self.clock.advance(FIRST_BACKOFF)
        self.agent.flush()
        self.assertEqual([data for _, data in self.target.applied], [data])


class RefusedConnectionTests(TestCase):
    """
    The poller's own HTTP client against a real 127.0.0.1 port that
    nothing listens on.
    """

    async def test_refused_connection_is_recorded_and_retried(self):
        """A source that refuses connections is recorded as retrying, with the reason, and tried again."""
        from twisted.internet import reactor

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        source = ReplicationSource("hq", "HQ", f"http://127.0.0.1:{number}/", KEY)
        spool = self.mktemp()
        os.makedirs(spool)
        poller = ReplicaPoller(ListTarget(), source, "media", reactor, spool, wait=1)
        poller.startService()
        self.addCleanup(poller.stopService)
        status = await poller.synced
        self.assertEqual((status.state, status.failures), ("retrying", 1))
        self.assertIn("ConnectionRefused", status.last_result)
        poller.update_source(source)  # cuts the backoff short
        status = await poller.synced
        self.assertEqual((status.state, status.failures), ("retrying", 2))
