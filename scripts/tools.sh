#!/usr/bin/env bash
# The programs the tests run beside the crawler's own: haproxy (the tests
# put the real one in front of two gateways), podman (podman-compose needs
# it to validate the compose files), Chromium and its WebDriver (a test
# drives the gateway's web page in a real browser) and kubectl with
# kustomize (to render the Kubernetes manifests). Installed from Debian's packages when this runs
# as root with apt; named otherwise.
set -uo pipefail
source "$(dirname "$0")/apt.sh"

missing=0
command -v haproxy >/dev/null 2>&1 || apt_install haproxy || missing=1
command -v podman >/dev/null 2>&1 || apt_install podman runc || missing=1
command -v chromedriver >/dev/null 2>&1 || apt_install chromium chromium-driver || missing=1
if ! command -v kubectl >/dev/null 2>&1; then
  echo "tools: kubectl is not installed; install it (https://kubernetes.io/docs/tasks/tools/) to render deploy/" >&2
  missing=1
fi
exit "$missing"
