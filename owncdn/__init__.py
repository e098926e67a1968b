"""
OwnCDN: a self-hosted CDN node and versioned object store on Twisted.
"""

__version__ = "0.1.0"
