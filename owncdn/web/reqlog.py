"""
The last requests of an api or public service, for C{reqlist}.
"""

import time
from collections import deque
from datetime import datetime, timezone

MAX_ENTRIES = 100


def rfc3339(seconds: float) -> str:
    """
    An RFC 3339 UTC timestamp with millisecond precision.
    """
    # isoformat is several times faster than strftime (a filelist page
    # formats a thousand of these); it ends in "+00:00".
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds")[:-6] + "Z"


class RequestLog:
    """
    A ring of the last L{MAX_ENTRIES} finished requests.  Entries hold
    the URL as the client sent it and never any header, so no key value
    can leak through C{reqlist}.
    """

    def __init__(self):
        self._entries: deque = deque(maxlen=MAX_ENTRIES)

    def record(self, request) -> None:
        # Called for every request: keep what it costs nothing to keep,
        # and leave decoding to the rare reqlist that reads it.
        self._entries.append((
            time.time(),
            request.getClientAddress(),
            request.method,
            request.uri,
            request.code,
            request.sentLength,
            (time.monotonic() - request.started) * 1000 if request.started else 0.0,
        ))

    def latest(self, limit: int) -> list[dict]:
        """
        The newest C{limit} entries, newest first, in C{reqlist} form.
        """
        entries = list(self._entries)[-limit:] if limit else []
        return [
            {"time": rfc3339(t), "remote": getattr(address, "host", ""),
             "method": method.decode("latin-1"), "url": url.decode("latin-1"),
             "status": status, "bytes": size, "ms": round(ms, 3)}
            for t, address, method, url, status, size, ms in reversed(entries)
        ]
