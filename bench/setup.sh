#!/bin/sh
# Install what the benchmarks need: nginx and wrk to compare with and
# to load the daemon, py-spy to profile it.  Run as root (apt-get).
# The benchmarks themselves only ever listen on 127.0.0.1.
set -e
cd "$(dirname "$0")/.."
apt-get update
apt-get install -y nginx wrk
# The packaged nginx starts a system-wide server on port 80; the
# benchmarks run their own, so stop that one if a service manager
# started it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx
fi
.venv/bin/pip install py-spy
