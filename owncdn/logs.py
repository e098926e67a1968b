"""
Log observers for twistd's C{--logger} option.
"""

import sys

from twisted.logger import jsonFileLogObserver


def json_stdout():
    """
    JSON lines on stdout: C{twistd --logger=owncdn.logs.json_stdout}.

    Without a record separator: Twisted's default starts each record
    with C{\\x1e} (RFC 7464 JSON text sequences), which tools that read
    JSON lines take for a broken line.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
