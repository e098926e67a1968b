#!/bin/sh
# Every benchmark of docs/performance.md, one after the other (about
# 15 minutes on the 2-core development machine).  bench/setup.sh
# installs nginx, wrk and py-spy first.  Raw figures land in
# bench/results/ (not in git).
set -e
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY bench/getfile_bench.py
$PY bench/bigfile_bench.py
$PY bench/filelist_bench.py
$PY bench/replication_bench.py
