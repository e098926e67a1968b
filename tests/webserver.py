"""
An in-process OwnCDN web front on a real 127.0.0.1 socket, for tests of
the resource tree that need no daemon process.
"""

from pathlib import Path

import treq
from twisted.internet import reactor

from owncdn import config as configmod
from owncdn.registry import ServiceRegistry
from owncdn.state import DaemonState
from owncdn.web.dispatcher import Dispatcher
from owncdn.web.reqlog import RequestLog
from owncdn.web.site import OwnCDNSite

WRITER = "writer-secret-0123456789"
READER = "reader-secret-0123456789"


def base_config(services=None, keys=None) -> dict:
    return {
        "instanceName": "test",
        "services": [{"id": "api", "type": "api"}] + (services or []),
        "keys": [
            {"id": "WRITER", "value": WRITER, "access": "write"},
            {"id": "READER", "value": READER, "access": "read"},
        ] + (keys or []),
        "replicationSources": [],
    }


class WebFront:
    """
    The dispatcher and site for a configuration and some file services,
    listening on an ephemeral port; closed by the test's cleanup.
    """

    def __init__(self, testcase, raw: dict, services: dict | None = None,
                 max_upload_size: int = configmod.DEFAULT_MAX_UPLOAD):
        self.config = configmod.parse(raw)
        self.registry = ServiceRegistry()
        for sid, service in (services or {}).items():
            self.registry.add(sid, service)
        spool = Path(testcase.mktemp())
        spool.mkdir(parents=True)
        self.state = DaemonState(spool, self.config, self.registry)
        self.site = OwnCDNSite(Dispatcher(self.state), spool_dir=spool,
                               max_upload_size=max_upload_size, header_timeout=30)
        # Its spool threads (if a body was spooled) stop once it has closed.
        testcase.addCleanup(self.site.stop_spooling)
        for service in self.config.services:
            if service.type in ("api", "public"):
                self.site.request_logs[service.id] = RequestLog()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def call(self, method: str, function: str, key: str | None = WRITER,
                   headers: dict | None = None, **kwargs):
        """
        A standard-mode call; returns the treq response.
        """
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["x-owncdn-key"] = key
        return await treq.request(method, self.url + "/" + function,
                                  headers=all_headers, timeout=10, persistent=False, **kwargs)

    async def json(self, method: str, function: str, **kwargs):
        """
        A standard-mode call; returns (status, decoded JSON body).
        """
        response = await self.call(method, function, **kwargs)
        return response.code, await response.json()
