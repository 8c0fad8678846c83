#!/usr/bin/env bash
# The programs the tests run beside the crawler's own: haproxy (the tests
# put the real one in front of two gateways). Installed from Debian's
# packages when this runs as root with apt; named otherwise.
set -uo pipefail
source "$(dirname "$0")/apt.sh"

missing=0
command -v haproxy >/dev/null 2>&1 || apt_install haproxy || missing=1
exit "$missing"
