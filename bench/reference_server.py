"""
Plain twisted.web servers that give the getfile benchmark its scale:
the least a CPython Twisted server can do per request.

    python bench/reference_server.py bare PORT      # a Resource returning 1 KiB
    python bench/reference_server.py static PORT DIR  # static.File over DIR

Both use twisted.web's Site with its default access log (none is
configured, so Site.log formats nothing to disk).
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server, static

BODY = bytes(range(256)) * 4


class Bare(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/octet-stream")
        return BODY


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    root = Bare() if mode == "bare" else static.File(sys.argv[3])
    reactor.listenTCP(port, server.Site(root), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
