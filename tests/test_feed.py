"""
The change feed behind syncnext: waiters wake on a change, time out,
and leave no trace when cancelled.
"""

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from owncdn.interfaces import Change
from owncdn.replication.feed import ChangeFeed


class ListLog:
    """
    A change log held in a list, for driving the feed.
    """

    def __init__(self):
        self.changes: list[Change] = []
        self.queries = 0

    def last_change_id(self) -> int:
        return self.changes[-1].id if self.changes else 0

    def changes_after(self, after, limit):
        self.queries += 1
        return defer.succeed([c for c in self.changes if c.id > after][:limit])

    def add(self, path="a") -> Change:
        change = Change(self.last_change_id() + 1, 0.0, "put", path, "v", 1, "e", None, "text/plain")
        self.changes.append(change)
        return change


class ChangeFeedTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log = ListLog()
        self.feed = ChangeFeed(self.log)

    def ask(self, after=0, limit=10, wait=30):
        return defer.Deferred.fromCoroutine(self.feed.next_changes(after, limit, wait, self.clock))

    def test_answers_at_once_when_changes_exist(self):
        """Changes after `after` are answered without waiting."""
        self.log.add("a")
        self.log.add("b")
        result = self.successResultOf(self.ask(after=1))
        self.assertEqual([c.path for c in result], ["b"])
        self.assertEqual(self.feed.waiting, 0)

    def test_limit_caps_the_answer(self):
        """No more than `limit` changes come back, oldest first."""
        for name in "abc":
            self.log.add(name)
        result = self.successResultOf(self.ask(after=0, limit=2))
        self.assertEqual([c.id for c in result], [1, 2])

    def test_change_wakes_every_waiter_at_once(self):
        """One committed change answers all parked waiters, without further polling."""
        waiting = [self.ask() for _ in range(100)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(self.feed.waiting, 100)
        self.assertEqual(self.log.queries, 0)
        self.feed.notify(self.log.add("x"))
        for d in waiting:
            self.assertEqual([c.path for c in self.successResultOf(d)], ["x"])
        self.assertEqual(self.feed.waiting, 0)

    def test_wait_ends_empty_after_timeout(self):
        """With nothing new, the answer is an empty list after `wait` seconds."""
        d = self.ask(wait=30)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.feed.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_leaves_no_waiter_and_no_timer(self):
        """A client that goes away is removed from the feed with its timer."""
        d = self.ask(wait=60)
        self.assertEqual(self.feed.waiting, 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.feed.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_wait_answers_empty_at_once(self):
        """wait=0 never parks the request."""
        self.assertEqual(self.successResultOf(self.ask(wait=0)), [])
        self.assertEqual(self.feed.waiting, 0)

    def test_release_all_answers_waiters(self):
        """Stopping the daemon answers every parked long poll at once, with its timer gone."""
        waiting = [self.ask() for _ in range(3)]
        self.feed.release_all()
        for d in waiting:
            self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.feed.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
