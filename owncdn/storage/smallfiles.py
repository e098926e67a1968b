"""
Small current files kept in memory by the storage service.

Serving a small file through a thread pool costs more than everything
else the request does, so the service keeps the newest version of
small files here and answers C{get} without leaving the reactor thread.
Only the reactor thread touches it: the service fills it from the
results of reads and updates it after every commit, and since the
service is the database's only writer no change can slip past it.
"""

from collections import OrderedDict

from owncdn.storage.reads import LoadedVersion

# Cache size: ~500 typical web assets, or 512 files of the largest
# small size, for the price of 32 MiB.
SMALL_FILES_MEMORY = 32 * 1024 * 1024
# What an entry costs besides its bytes (FileInfo, dict slot, objects).
ENTRY_OVERHEAD = 512


def _cost(loaded: LoadedVersion) -> int:
    return len(loaded.data) + len(loaded.br or b"") + ENTRY_OVERHEAD


class SmallFileCache:
    """
    The current version of recently used small files, by path, evicting
    the least recently used beyond C{max_bytes}.
    """

    def __init__(self, max_bytes: int = SMALL_FILES_MEMORY):
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[str, LoadedVersion] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> LoadedVersion | None:
        loaded = self._entries.get(path)
        if loaded is not None:
            self._entries.move_to_end(path)
        return loaded

    def add(self, path: str, loaded: LoadedVersion) -> None:
        """
        Keep C{loaded} (which must carry its C{data}) as the current
        version of C{path}.
        """
        self.discard(path)
        cost = _cost(loaded)
        if cost > self.max_bytes:
            return
        self._entries[path] = loaded
        self.used_bytes += cost
        while self.used_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used_bytes -= _cost(evicted)

    def discard(self, path: str) -> None:
        loaded = self._entries.pop(path, None)
        if loaded is not None:
            self.used_bytes -= _cost(loaded)
