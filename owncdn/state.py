"""
What the web layer needs of the running daemon, in one object.
"""

from pathlib import Path

from twisted.logger import Logger

from owncdn import config as configmod
from owncdn.interfaces import IChangeLog
from owncdn.keys import KeyRing
from owncdn.registry import ServiceRegistry
from owncdn.replication.feed import ChangeFeed

log = Logger()


class DaemonState:
    """
    The configuration, API keys and file services of this daemon.

    Keys and replication sources are swapped in place by L{reload}
    (SIGHUP); services are built once at start, so changing them needs a
    restart.
    """

    def __init__(self, data_dir: Path, config: configmod.Config, registry: ServiceRegistry,
                 clock=None):
        self.data_dir = Path(data_dir)
        self.config = config
        self.registry = registry
        self.keys = KeyRing(config.keys)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._feeds: dict[str, ChangeFeed] = {}

    def feed(self, sid: str) -> ChangeFeed | None:
        """
        The change feed of storage service C{sid}, made on first use (no
        one can be waiting on a feed before it exists), or C{None} for a
        service without a change log.
        """
        feed = self._feeds.get(sid)
        if feed is None:
            service = self.registry.get(sid)
            if not IChangeLog.providedBy(service):
                return None
            feed = self._feeds[sid] = ChangeFeed(service)
            service.change_listeners.append(feed.notify)
        return feed

    def release_waiters(self) -> None:
        """
        Answer every parked C{syncnext} long poll: the daemon is stopping.
        """
        for feed in self._feeds.values():
            feed.release_all()

    def reload(self) -> None:
        """
        Re-read C{owncdn.json} and take its keys and replication sources.
        An invalid file is logged and ignored: the daemon keeps serving
        with what it had.
        """
        try:
            fresh = configmod.load(self.data_dir)
        except configmod.ConfigError as e:
            log.error("configuration not reloaded: {error}", error=str(e))
            return
        self.keys = KeyRing(fresh.keys)
        self.config.keys = fresh.keys
        self.config.sources = fresh.sources
        for poller in self.registry.pollers.values():
            source = fresh.source(poller.source.id)
            if source is not None:
                poller.update_source(source)
        changed = [s.id for s in fresh.services
                   if (old := self.config.service(s.id)) is None or old.raw != s.raw]
        changed += [s.id for s in self.config.services if fresh.service(s.id) is None]
        if changed:
            log.warn("services changed ({sids}): restart the daemon to apply that",
                     sids=", ".join(changed))
        log.info("configuration reloaded: {keys} keys", keys=len(fresh.keys))
