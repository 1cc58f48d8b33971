#!/usr/bin/env bash
# Start a local PostgreSQL for the experiment registry's tests (idempotent).
#
#   URL=$(bash scripts/start_postgres.sh)   # prints the SQLAlchemy URL on its last line
#
# Installs Debian's postgresql package when it is missing (needs root), creates and starts
# the cluster, a role `flan_moe` (password `flan_moe`, may create databases) and a database
# `flan_moe_test`. The tests create a throwaway database per test beside it.
set -euo pipefail
say() { echo "start_postgres: $*" >&2; }
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "postgresql is not installed; run as root (apt-get install -y postgresql) or set FLAN_MOE_TEST_POSTGRES_URL"
    exit 1
  fi
  say "installing Debian's postgresql package"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION main"; then
  pg_createcluster "$VERSION" main >&2
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$VERSION" main start >&2
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { say "PostgreSQL did not start on port $PORT"; exit 1; }
psql_admin() { runuser -u postgres -- psql -p "$PORT" -tAq "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='flan_moe'")" != 1 ]; then
  psql_admin -c "CREATE ROLE flan_moe LOGIN CREATEDB PASSWORD 'flan_moe'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='flan_moe_test'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE flan_moe_test OWNER flan_moe" >&2
fi
echo "postgresql+psycopg://flan_moe:flan_moe@127.0.0.1:$PORT/flan_moe_test"
