#!/usr/bin/env bash
# The Python the tests use for their independent references (html5lib for
# the differential test of the link extractor), in a virtual environment of
# its own under target/py, made once from scripts/requirements-test.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py
if "$venv/bin/python" -c "import html5lib" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$venv" 2>/dev/null; then
  echo "python-env: cannot make a virtual environment; install Python 3 with venv (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
