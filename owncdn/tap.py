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

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from owncdn import config as configmod
from owncdn.lockfile import FileLock, LockedByOther
from owncdn.registry import ServiceContext, ServiceRegistry, build_services
from owncdn.state import DaemonState
from owncdn.web.dispatcher import Dispatcher
from owncdn.web.reqlog import RequestLog
from owncdn.web.site import OwnCDNSite

DEFAULT_LISTEN = "tcp:8080"
LOCK_NAME = "owncdn.lock"
SPOOL_NAME = "spool"

log = Logger()


def default_data_dir() -> str:
    return os.environ.get("OWNCDN_DATA_DIR") or "./owncdn-data"


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


class DrainService(service.Service):
    """
    On stop, waits until the site has no request in flight.
    """

    def __init__(self, site: OwnCDNSite):
        self.site = site

    def stopService(self):
        super().stopService()
        return self.site.drained()


class DaemonLockService(service.Service):
    """
    Holds C{owncdn.lock} in the data folder while the daemon runs, with
    the pid (written after twistd's fork) and listen endpoints in it.
    """

    def __init__(self, lock: FileLock, listen: list[str], state: DaemonState):
        self.lock = lock
        self.listen = listen
        self.state = state

    def startService(self):
        super().startService()
        os.ftruncate(self.lock._fd, 0)
        os.pwrite(self.lock._fd, json.dumps({"pid": os.getpid(), "listen": self.listen}).encode(), 0)
        if hasattr(signal, "SIGHUP"):
            from twisted.internet import reactor
            signal.signal(signal.SIGHUP,
                          lambda *_: reactor.callFromThread(self.state.reload))

    def stopService(self):
        super().stopService()
        self.lock.release()


def fail(message: str):
    sys.stderr.write(f"owncdn: {message}\n")
    raise SystemExit(1)


def build_daemon(data_dir: Path, listen: list[str], reactor) -> service.MultiService:
    """
    The whole daemon as one service: lock, file services, then the web.
    """
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
    DaemonLockService(lock, listen, state).setServiceParent(root)
    try:
        build_services(ServiceContext(data_dir, reactor, config, registry))
    except configmod.ConfigError as e:
        lock.release()
        fail(f"invalid configuration: {e}")
    for _, file_service in registry.items():
        file_service.setServiceParent(root)

    site = OwnCDNSite(Dispatcher(state), spool_dir=spool,
                      max_upload_size=config.max_upload_size,
                      header_timeout=config.header_timeout, reactor=reactor)
    for service_config in config.services:
        if service_config.type in ("api", "public"):
            site.request_logs[service_config.id] = RequestLog()
    web = SequentialMultiService()
    web.setName("web")
    DrainService(site).setServiceParent(web)
    for description in listen:
        strports.service(description, site, reactor=reactor).setServiceParent(web)
    web.setServiceParent(root)
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
