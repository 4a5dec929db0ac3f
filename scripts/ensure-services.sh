#!/usr/bin/env bash
# Start PostgreSQL and Redis on 127.0.0.1 when they are installed locally but not running.
# Idempotent: does nothing when both answer. Used by `make test` (and CI) before the suite.
set -euo pipefail

wait_for() {  # wait_for NAME COMMAND...: poll for up to 30 s
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $name did not come up" >&2
  return 1
}

if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  fi
else
  echo "ensure-services: PostgreSQL client tools not installed; database tests will be skipped" >&2
fi

if command -v redis-cli >/dev/null 2>&1; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "ensure-services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
  fi
else
  echo "ensure-services: Redis not installed; broker tests will be skipped" >&2
fi
