#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster from Debian's packages, for tests.
#
#   scripts/pg-server.sh start VERSION DIR PORT   # prints a superuser URL on stdout
#   scripts/pg-server.sh stop  VERSION DIR
#
# Installs postgresql-VERSION with apt-get when it is missing. Runs the server as
# the 'postgres' OS user when invoked as root (PostgreSQL refuses to run as root).
# Password (SCRAM) authentication on 127.0.0.1 only; the superuser password is
# generated and kept in DIR/superuser.password (mode 0600).
set -euo pipefail

action=${1:?usage: pg-server.sh start|stop VERSION DIR [PORT]}
version=${2:?VERSION}
dir=${3:?DIR}
bindir=/usr/lib/postgresql/$version/bin

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
start)
  port=${4:?PORT}
  if [ ! -x "$bindir/postgres" ]; then
    echo "installing postgresql-$version with apt-get" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$version" >&2
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    pwfile=$(mktemp)
    printf '%s\n' "$password" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres --pwfile="$pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >&2
    rm -f "$pwfile"
    printf '%s' "$password" >"$dir/superuser.password"
    chmod 600 "$dir/superuser.password"
  fi
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories= \
        -c max_connections=300 -c shared_preload_libraries=pg_stat_statements" start >&2
  echo "postgresql://postgres:$(cat "$dir/superuser.password")@127.0.0.1:$port/postgres"
  ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  fi
  ;;
*)
  echo "unknown action: $action" >&2
  exit 2
  ;;
esac
