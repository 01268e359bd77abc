#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1 for the store's tests and for developers.
#
#   bash scripts/pg.sh start    # init (once) and start; prints the URL
#   bash scripts/pg.sh url      # the URL of the running cluster
#   bash scripts/pg.sh status   # running or not (exit status 0 / 3)
#   bash scripts/pg.sh stop     # stop the cluster this script started (its data folder stays)
#
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user, in a
# folder it owns; as another user it is yours. Debian's PostgreSQL (apt-get install postgresql)
# is installed when missing and this runs as root. State: $COPYLOOP_PG_DIR (default
# /tmp/copyloop-pg); port $COPYLOOP_PG_PORT (default 55432).
set -euo pipefail
DIR="${COPYLOOP_PG_DIR:-/tmp/copyloop-pg}"
PORT="${COPYLOOP_PG_PORT:-55432}"
URL="postgresql://postgres@127.0.0.1:${PORT}/copyloop"
bin() {
  local b
  b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$b" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    }
    b=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  [ -n "$b" ] || { echo "pg.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 2; }
  echo "$b"
}
as_owner() {  # run a command as the cluster's owner
  if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
case "${1:-}" in
  start)
    B=$(bin)
    mkdir -p "$DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DIR" && chmod 700 "$DIR"
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      as_owner "$B/initdb -D $DIR/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >$DIR/initdb.log 2>&1"
    fi
    if ! as_owner "$B/pg_ctl -D $DIR/data status" >/dev/null 2>&1; then
      as_owner "$B/pg_ctl -D $DIR/data -l $DIR/pg.log -w -o \"-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200\" start" >/dev/null
    fi
    as_owner "$B/psql -h 127.0.0.1 -p $PORT -U postgres -tAc \"select 1 from pg_database where datname='copyloop'\"" | grep -q 1 \
      || as_owner "$B/createdb -h 127.0.0.1 -p $PORT -U postgres copyloop"
    echo "$URL"
    ;;
  url) echo "$URL" ;;
  status)
    B=$(bin)
    if [ -f "$DIR/data/PG_VERSION" ] && as_owner "$B/pg_ctl -D $DIR/data status" >/dev/null 2>&1; then
      echo "running: $URL (data in $DIR)"
    else
      echo "stopped"; exit 3
    fi
    ;;
  stop)
    B=$(bin)
    if [ -f "$DIR/data/PG_VERSION" ] && as_owner "$B/pg_ctl -D $DIR/data status" >/dev/null 2>&1; then
      as_owner "$B/pg_ctl -D $DIR/data -m fast -w stop" >/dev/null
    fi
    ;;
  *) echo "usage: bash scripts/pg.sh start|url|status|stop" >&2; exit 2 ;;
esac
