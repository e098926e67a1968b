"""
The running services by ID, and how each service type is built.
"""

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owncdn.config import Config, ConfigError, ServiceConfig
from owncdn.errors import NoSuchService

# Service type -> module with a build(service_config, context) function.
# api and public are web entry points, not file services; they are built
# by the web layer.
SERVICE_MODULES = {
    "storage": "owncdn.services.storage",
    "memorycache": "owncdn.services.memorycache",
    "diskcache": "owncdn.services.diskcache",
    "filesystem": "owncdn.services.filesystem",
    "httpfetcher": "owncdn.services.httpfetcher",
    "imageoptimizer": "owncdn.services.imageoptimizer",
}


@dataclass
class ServiceContext:
    """
    What a service factory may use: the data folder, the reactor, the
    whole configuration and the registry (to find its source service).
    """

    data_dir: Path
    reactor: Any
    config: Config
    registry: "ServiceRegistry"

    @property
    def spool_dir(self) -> Path:
        """
        Where bodies in transit are spooled (emptied at every start).
        """
        return Path(self.data_dir) / "spool"


class ServiceRegistry:
    """
    The file services of this daemon, by service ID.
    """

    def __init__(self):
        self._services: dict[str, Any] = {}
        # Replica pollers by the ID of the service they fill; started
        # after and stopped before every file service.
        self.pollers: dict[str, Any] = {}

    def add(self, sid: str, service) -> None:
        self._services[sid] = service

    def get(self, sid: str):
        """
        @raise NoSuchService: no file service has this ID.
        """
        try:
            return self._services[sid]
        except KeyError:
            raise NoSuchService(f"no service {sid!r}") from None

    def __contains__(self, sid: str) -> bool:
        return sid in self._services

    def items(self):
        return self._services.items()


def _build_order(config: Config) -> list[ServiceConfig]:
    """
    File services ordered so that each comes after its source.
    """
    by_id = {s.id: s for s in config.services}
    ordered: list[ServiceConfig] = []

    def visit(service: ServiceConfig):
        if service in ordered:
            return
        source = service.options.get("source")
        if source is not None:
            visit(by_id[source])
        ordered.append(service)

    for service in config.services:
        if service.type not in ("api", "public"):
            visit(service)
    return ordered


def build_services(context: ServiceContext) -> None:
    """
    Build every file service of C{context.config} into
    C{context.registry}, sources first.

    @raise ConfigError: a service type this version cannot run.
    """
    for service_config in _build_order(context.config):
        try:
            module = importlib.import_module(SERVICE_MODULES[service_config.type])
        except ModuleNotFoundError:
            raise ConfigError(
                f"services ({service_config.id}).type: {service_config.type} "
                "services are not available in this version"
            ) from None
        service = module.build(service_config, context)
        context.registry.add(service_config.id, service)
        if service_config.options.get("replica"):
            context.registry.pollers[service_config.id] = _poller(service_config, service, context)


def _poller(service_config: ServiceConfig, service, context: ServiceContext):
    from owncdn.replication.poller import ReplicaPoller
    from owncdn.replication.status import status_path

    replica = service_config.options["replica"]
    return ReplicaPoller(
        service, context.config.source(replica["source"]), replica["sid"], context.reactor,
        context.spool_dir, status_path=status_path(context.data_dir, service_config.id))
