"""
What a C{diskcache} service keeps in memory about its complete items,
as nginx keeps its cache keys in a shared zone: each item's ID, the
bytes its chunks take and when it was validated and last used, in
least-recently-used order.  Lookups, refresh and expiry decisions and
C{maxSize} eviction need no database read; when items were last used
goes back to the database in batches (L{CacheIndex.take_touches}), not
on every hit.

Nothing here touches the database: the service discards what this
index lets go of.
"""

from collections import OrderedDict
from collections.abc import Callable

from owncdn.services.cachepolicy import CacheKey
from owncdn.storage.smallfiles import SmallFileCache


class IndexEntry:
    """
    What is kept in memory about one complete item.

    @ivar stored: the bytes its chunks take on disk, what C{maxSize}
        counts.
    """

    __slots__ = ("item_id", "stored", "validated_at", "last_used")

    def __init__(self, item_id: int, stored: int, validated_at: float, last_used: float):
        self.item_id = item_id
        self.stored = stored
        self.validated_at = validated_at
        self.last_used = last_used


class CacheIndex:
    """
    The complete items of one disk cache, and the room they and the
    fills in progress take.

    @ivar held: the bytes the complete items' chunks take.
    @ivar reserved: the bytes set aside for fills in progress (their
        announced sizes, an upper bound of what their chunks take).
    @ivar hot: small items recently served, held whole in memory (the
        storage service's L{SmallFileCache}), so that their hits leave
        no thread hop.
    """

    def __init__(self, max_size: int, hot_memory: int):
        self.max_size = max_size
        self.held = 0
        self.reserved = 0
        self.hot = SmallFileCache(hot_memory)
        self._entries: OrderedDict[CacheKey, IndexEntry] = OrderedDict()
        self._touched: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> IndexEntry | None:
        return self._entries.get(key)

    def add(self, key: CacheKey, entry: IndexEntry) -> None:
        """
        Serve C{entry} for C{key}, as the most recently used item.
        """
        self._entries[key] = entry
        self.held += entry.stored

    def use(self, key: CacheKey, entry: IndexEntry, now: float) -> None:
        """
        Record a hit: C{entry} becomes the most recently used item.
        """
        entry.last_used = now
        self._touched[entry.item_id] = now
        self._entries.move_to_end(key)

    def forget(self, key: CacheKey) -> IndexEntry | None:
        """
        Stop serving C{key}.

        @return: its entry, or C{None} when it had none.
        """
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.hot.discard(key)
            self._touched.pop(entry.item_id, None)
            self.held -= entry.stored
        return entry

    def reserve(self, size: int) -> list[int] | None:
        """
        Set aside room for an item of C{size} bytes, forgetting the
        least recently used items as needed.

        @return: the IDs of the items forgotten to make room (for the
            caller to discard), or C{None} when even forgetting them all
            would not be enough (then nothing changed).
        """
        if self.max_size and self.reserved + size > self.max_size:
            return None
        evicted = []
        while self.max_size and self._entries and (
                self.held + self.reserved + size > self.max_size):
            key, entry = next(iter(self._entries.items()))
            self.forget(key)
            evicted.append(entry.item_id)
        self.reserved += size
        return evicted

    def release(self, size: int) -> None:
        """
        Give back the room a fill reserved (kept or not, its item is
        counted in L{held} by L{add}).
        """
        self.reserved -= size

    def forget_unused(self, is_unused: Callable[[float, float], bool], now: float) -> list[int]:
        """
        Forget the items C{is_unused(last_used, now)} says are unused:
        the order is the order of last use, so they are all at the
        front.

        @return: their item IDs.
        """
        expired = []
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if not is_unused(entry.last_used, now):
                break
            self.forget(key)
            expired.append(entry.item_id)
        return expired

    def take_touches(self) -> list[tuple[float, int]]:
        """
        The C{(last_used, item_id)} pairs of the hits since the last
        call, for the database.
        """
        touches, self._touched = self._touched, {}
        return [(when, item_id) for item_id, when in touches.items()]

    def clear(self) -> list[int]:
        """
        Forget every item.

        @return: their item IDs.
        """
        item_ids = [entry.item_id for entry in self._entries.values()]
        self._entries.clear()
        self._touched.clear()
        self.hot = SmallFileCache(self.hot.max_bytes)
        self.held = 0
        return item_ids
