"""
What goes wrong in one attempt to sync with a source.
"""


class SyncError(Exception):
    """
    One sync attempt failed; it will be retried.
    """
