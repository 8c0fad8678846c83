#!/bin/sh
# Runs the command it is given, like the public redis image: a
# `redis-server` command gets the settings that image builds in (listen on
# every address, no protected mode: the container network is the boundary),
# then the command's own arguments.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  exec redis-server --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
