"""
The twistd plugin's options and C{makeService}, shared by
C{twistd owncdn} and C{owncdn.tac}.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import failure, usage

from owncdn import config as configmod
from owncdn import runtime
from owncdn.lockfile import FileLock, LockedByOther
from owncdn.registry import ServiceContext, ServiceRegistry, build_services
from owncdn.state import DaemonState
from owncdn.web.dispatcher import Dispatcher
from owncdn.web.reqlog import RequestLog
from owncdn.web.s3multipart import UploadExpiry
from owncdn.web.site import OwnCDNSite

DEFAULT_LISTEN = "tcp:8080"
LOCK_NAME = "owncdn.lock"
SPOOL_NAME = "spool"

log = Logger()


def default_data_dir() -> str:
    return os.environ.get("OWNCDN_DATA_DIR") or "./owncdn-data"


def fail(message: str):
    """
    Stop start-up with one clear line, not a traceback.  Once twistd's
    logging has begun, stderr goes to the log.
    """
    sys.stderr.write(f"owncdn: {message}\n")
    raise SystemExit(1)


class Options(usage.Options):
    synopsis = "[--data-dir DIR] [--listen DESCRIPTION ...]"
    longdesc = ("Run an OwnCDN node: the HTTP API (standard and S3 mode) and "
                "public bindings on every --listen endpoint.")
    optParameters = [
        ["data-dir", "d", None,
         "Data folder (default: $OWNCDN_DATA_DIR, else ./owncdn-data)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description):
        """
        Endpoint to serve on, such as tcp:8080 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable;
        default tcp:8080).
        """
        self["listen"].append(description)

    def postOptions(self):
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]


class SequentialMultiService(service.MultiService):
    """
    Stops its children one at a time, newest first, each after the one
    before has finished: the listeners close, then in-flight requests
    drain, then the databases close.
    """

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("error stopping {service}", service=child)


class ListenService(service.Service):
    """
    One C{--listen} endpoint.  It listens in C{privilegedStartService}
    (before twistd drops privileges) and a failure, such as a busy port,
    stops start-up instead of leaving a daemon that listens on nothing.
    """

    def __init__(self, description: str, endpoint, factory):
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()

    def startService(self):
        super().startService()
        if self.port is None:
            self._listen()

    def _listen(self):
        outcome = []
        # Stream server endpoints of the reactor (tcp, ssl, unix) listen
        # at once, so the Deferred has fired when listen() returns.
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], failure.Failure):
            reason = outcome[0].getErrorMessage() if outcome else "no answer"
            fail(f"cannot listen on {self.description}: {reason}")
        self.port = outcome[0]
        log.info("listening on {description} (port {port})",
                 description=self.description, port=self.port.getHost().port)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)


class DrainService(service.Service):
    """
    On stop, after the listeners have closed, lets every request in
    progress finish and closes the connections, then stops the site's
    spool threads.
    """

    def __init__(self, site: OwnCDNSite, state: DaemonState):
        self.site = site
        self.state = state

    def stopService(self):
        super().stopService()
        self.state.release_waiters()
        d = self.site.drain()
        d.addBoth(self._stop_spooling)
        return d

    def _stop_spooling(self, result):
        self.site.stop_spooling()
        return result


class SignalService(service.Service):
    """
    SIGHUP reloads keys and replication sources; SIGTERM stops the
    daemon gracefully and, unlike twistd's own handler (which re-raises
    the signal once stopped), lets it exit with status 0.
    """

    stopping = False

    def __init__(self, state: DaemonState, reactor):
        self.state = state
        self.reactor = reactor

    def startService(self):
        super().startService()
        self._install()
        # Again once running: the reactor installs its own SIGTERM
        # handler at startup.
        self.reactor.callWhenRunning(self._install, announce=True)

    def _install(self, announce: bool = False):
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._reload))
        signal.signal(signal.SIGTERM, lambda *_: self.reactor.callFromThread(self._terminate))
        if announce:
            log.info("running; {signals}",
                     signals="SIGHUP reloads keys and replication sources, SIGTERM stops gracefully")

    def _reload(self):
        log.info("SIGHUP: reloading the configuration")
        self.state.reload()

    def _terminate(self):
        if self.stopping:
            return
        self.stopping = True
        log.info("SIGTERM: finishing requests in progress, then stopping")
        self.reactor.stop()


class DaemonLockService(service.Service):
    """
    Holds C{owncdn.lock} in the data folder while the daemon runs, with
    the pid (written after twistd's fork) and listen endpoints in it.
    """

    def __init__(self, lock: FileLock, listen: list[str]):
        self.lock = lock
        self.listen = listen

    def startService(self):
        super().startService()
        self.lock.write_note(json.dumps({"pid": os.getpid(), "listen": self.listen}))

    def stopService(self):
        super().stopService()
        self.lock.release()


def build_daemon(data_dir: Path, listen: list[str], reactor) -> service.MultiService:
    """
    The whole daemon as one service: lock, file services, then the web.
    """
    listeners = []
    for description in listen:
        try:
            listeners.append((description, endpoints.serverFromString(reactor, description)))
        except (ValueError, KeyError, OSError) as e:
            fail(f"--listen {description}: {e}")

    data_dir = Path(data_dir).absolute()
    try:
        config, new_key = configmod.init_data_dir(data_dir)
    except configmod.ConfigError as e:
        fail(f"invalid configuration: {e}")
    except OSError as e:
        fail(f"cannot use the data folder {data_dir}: {e}")

    lock = FileLock(data_dir / LOCK_NAME)
    try:
        lock.acquire()
    except LockedByOther:
        fail(f"another daemon is serving {data_dir}")
    if new_key is not None:
        key = config.keys[0]
        log.warn("created a new data folder {data_dir}; API key {key_id} has the value "
                 "{key_value} (shown only this once)",
                 data_dir=str(data_dir), key_id=key.id, key_value=new_key)

    spool = data_dir / SPOOL_NAME
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(mode=0o700)

    registry = ServiceRegistry()
    state = DaemonState(data_dir, config, registry)
    root = SequentialMultiService()
    DaemonLockService(lock, listen).setServiceParent(root)
    SignalService(state, reactor).setServiceParent(root)
    try:
        build_services(ServiceContext(data_dir, reactor, config, registry))
    except configmod.ConfigError as e:
        lock.release()
        fail(f"invalid configuration: {e}")
    for _, file_service in registry.items():
        file_service.setServiceParent(root)
    for poller in registry.pollers.values():
        poller.setServiceParent(root)

    dispatcher = Dispatcher(state)
    UploadExpiry(dispatcher.s3.uploads, reactor).setServiceParent(root)
    site = OwnCDNSite(dispatcher, spool_dir=spool,
                      max_upload_size=config.max_upload_size,
                      header_timeout=config.header_timeout, body_timeout=config.body_timeout,
                      reactor=reactor)
    for service_config in config.services:
        if service_config.type in ("api", "public"):
            site.request_logs[service_config.id] = RequestLog()
    web = SequentialMultiService()
    web.setName("web")
    DrainService(site, state).setServiceParent(web)
    for description, endpoint in listeners:
        ListenService(description, endpoint, site).setServiceParent(web)
    web.setServiceParent(root)
    reactor.callWhenRunning(runtime.tune)
    return root


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    return build_daemon(Path(options["data-dir"]), options["listen"], reactor)


def service_from_environment() -> service.MultiService:
    """
    For C{owncdn.tac}: C{OWNCDN_DATA_DIR} and C{OWNCDN_LISTEN} (endpoint
    descriptions separated by spaces).
    """
    options = Options()
    options.parseOptions(
        [arg for d in os.environ.get("OWNCDN_LISTEN", "").split() for arg in ("--listen", d)]
    )
    return makeService(options)
