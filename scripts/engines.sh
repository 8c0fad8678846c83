#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ answer on their standard local
# ports: a stopped engine that is installed is started; a missing one is
# installed from Debian's packages when this runs as root with apt, and
# named with its package otherwise. Exits non-zero if any is still missing.
set -uo pipefail
source "$(dirname "$0")/apt.sh"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if ((SECONDS >= deadline)); then
      echo "engines: $1 did not open 127.0.0.1:$2 within $3 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

missing=0

# A fresh Debian PostgreSQL asks passwords on TCP; the tests connect as
# postgres over 127.0.0.1 without one, as on the machines they run on.
trust_local_postgres() {
  local hba
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n 1)
  sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
}

ensure_postgres() {
  port_open 5432 && return 0
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && apt_install postgresql; then
    trust_local_postgres
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "engines: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    wait_port PostgreSQL 5432 60 || missing=1
  else
    echo "engines: PostgreSQL is not installed (Debian: apt-get install postgresql); tests need it on 127.0.0.1:5432 with trust auth for user postgres" >&2
    missing=1
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if command -v redis-server >/dev/null 2>&1; then
    echo "engines: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port Redis 6379 30 || missing=1
  else
    echo "engines: Redis is not installed (Debian: apt-get install redis-server); tests need it on 127.0.0.1:6379" >&2
    missing=1
  fi
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "engines: starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port RabbitMQ 5672 120 || missing=1
  else
    echo "engines: RabbitMQ is not installed (Debian: apt-get install rabbitmq-server); tests need it on 127.0.0.1:5672 with guest/guest" >&2
    missing=1
  fi
}

ensure_postgres
ensure_redis
ensure_rabbitmq
if ((missing)); then
  echo "engines: not every engine is available; see the messages above" >&2
  exit 1
fi
echo "engines: PostgreSQL, Redis and RabbitMQ are up"
