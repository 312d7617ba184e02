#!/bin/sh
# Test hosts on one machine: N Linux network namespaces on a private bridge (10.77.0.0/24), a Ray
# head in the first and a Ray worker node in each other, every host with its own address and /tmp.
#   sudo cluster/local/hosts.sh up [N]   # N hosts (default 3); replaces any left from before
#   sudo cluster/local/hosts.sh down     # removes every namespace, interface, process and file made
# The same code the test suite's multi-host fixture runs (tests/multihost.py); README "Running on
# many hosts" says what it builds and how to submit jobs to it.
cd "$(dirname "$0")/../.." || exit 1
exec nice -n 19 "${PYTHON:-.venv/bin/python}" tests/multihost.py "$@"
