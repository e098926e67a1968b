#!/bin/sh
# Install what bench/s3_bench.py and bench/cdn_bench.py compare OwnCDN
# with: moto's S3 server (in its own venv, bench/.venv-moto), s3rver
# (npm, into bench/node_modules), Varnish and nginx, wrk to load them
# all and py-spy to profile the daemon.  Run as root (apt-get).  The
# benchmarks only ever listen on 127.0.0.1.
set -e
cd "$(dirname "$0")"
apt-get update
apt-get install -y nginx varnish wrk python3-venv
# A node from elsewhere (NodeSource's nodejs bundles npm) must not be
# replaced by Debian's: install Debian's only when there is no npm.
command -v npm >/dev/null 2>&1 || apt-get install -y nodejs npm
# The packages start system-wide servers on ports 80 and 6081 where a
# service manager runs; the benchmarks run their own.
if command -v systemctl >/dev/null 2>&1; then
    for unit in nginx varnish varnishncsa; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then systemctl stop "$unit"; fi
    done
fi
[ -x .venv-moto/bin/moto_server ] || {
    python3 -m venv .venv-moto
    .venv-moto/bin/pip install 'moto[server]'
}
[ -x node_modules/.bin/s3rver ] || npm install --prefix . --no-save --no-package-lock s3rver@3.7.1
../.venv/bin/pip install py-spy
