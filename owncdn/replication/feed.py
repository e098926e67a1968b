"""
The change feed behind C{syncnext}: long-poll waiters served from
memory.

Each storage service's feed keeps a set of waiting futures.  A committed
change swaps the set out and resolves every waiter at once, so a put
wakes all replicas without anyone polling the database; a waiter that is
cancelled (its client went away, or its wait timed out) leaves the set
at once.  The feed also keeps the last L{RECENT} changes, so that the
woken replicas (and any replica that is nearly up to date) are answered
from memory, not with one database read each.  The feed is written
against txaio futures so it imports no reactor; the web layer adds the
timeout with its own clock.
"""

from collections import deque

import txaio

from owncdn.interfaces import Change, IChangeLog

txaio.use_twisted()

# As many as one syncnext may ask for.
RECENT = 1000


class ChangeFeed:
    """
    Waiting replicas of one change log.
    """

    def __init__(self, log: IChangeLog):
        self._log = log
        self._waiters: set = set()
        # Every change after _complete_after that the log committed since
        # the feed began, oldest first.
        self._recent: deque[Change] = deque(maxlen=RECENT)
        self._complete_after = log.last_change_id()

    @property
    def waiting(self) -> int:
        """
        How many waiters are parked now.
        """
        return len(self._waiters)

    def notify(self, change: Change) -> None:
        """
        A change was committed: wake every waiter.
        """
        if len(self._recent) == RECENT:
            self._complete_after = self._recent[0].id
        self._recent.append(change)
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            txaio.resolve(waiter, change.id)

    def release_all(self) -> None:
        """
        Answer every waiting long poll now (with whatever is new, usually
        nothing): the daemon is stopping and must not hold replicas for
        their full wait.
        """
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            txaio.resolve(waiter, None)

    def wait_for_change(self):
        """
        @return: a future that resolves with the ID of the next change;
            cancelling it removes it from the feed.
        """
        waiter = txaio.create_future(canceller=lambda f: self._waiters.discard(f))
        self._waiters.add(waiter)
        return waiter

    async def next_changes(self, after: int, limit: int, wait: float, clock) -> list[Change]:
        """
        Up to C{limit} changes after C{after}; when there are none, wait
        up to C{wait} seconds (on C{clock}) for one before answering an
        empty list.
        """
        if wait > 0 and self._log.last_change_id() <= after:
            waiter = self.wait_for_change()
            waiter.addTimeout(wait, clock, onTimeoutCancel=lambda result, timeout: None)
            await waiter
        last = self._log.last_change_id()
        if last <= after:
            return []
        if after >= self._complete_after and self._recent and self._recent[-1].id == last:
            return self._recent_after(after, limit)
        return await self._log.changes_after(after, limit)

    def _recent_after(self, after: int, limit: int) -> list[Change]:
        # Scan from the newest end: a waiting replica asks for the last
        # few changes.
        start = len(self._recent)
        while start > 0 and self._recent[start - 1].id > after:
            start -= 1
        return [self._recent[i] for i in range(start, min(start + limit, len(self._recent)))]
