"""
Log observers for twistd's C{--logger} option.
"""

import sys

from twisted.logger import jsonFileLogObserver


def json_stdout():
    """
    JSON lines on stdout: C{twistd --logger=owncdn.logs.json_stdout}.
    """
    return jsonFileLogObserver(sys.stdout)
