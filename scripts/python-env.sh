#!/usr/bin/env bash
# The Python the tests use for their independent references and tools
# (html5lib for the differential test of the link extractor, podman-compose
# and kubernetes-validate for the deployment files), in a virtual
# environment of its own under target/py, kept in step with
# scripts/requirements-test.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s scripts/requirements-test.txt "$stamp"; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" 2>/dev/null; then
  echo "python-env: cannot make a virtual environment; install Python 3 with venv (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
cp scripts/requirements-test.txt "$stamp"
