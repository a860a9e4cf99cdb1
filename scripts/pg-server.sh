#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster from Debian's packages, for tests.
#
#   scripts/pg-server.sh start VERSION DIR [PORT]  # prints a superuser URL on stdout
#   scripts/pg-server.sh stop  VERSION DIR
#
# Without PORT (or with PORT=auto) the server listens on a port the kernel has just
# handed out, and a start that loses that port to another process before binding it
# retries on a fresh one.  Never pass a fixed port in the ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999): any outgoing connection may
# hold it at that moment (tests/test_ports.py checks the repository for such ports).
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
  port=${4:-auto}
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
  log="$dir/data/server.log"
  for attempt in 1 2 3 4 5; do
    try_port=$port
    if [ "$port" = auto ]; then
      try_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    offset=$(stat -c %s "$log" 2>/dev/null || echo 0)
    if as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$try_port -c unix_socket_directories= \
            -c max_connections=300 -c shared_preload_libraries=pg_stat_statements" start >&2
    then
      echo "postgresql://postgres:$(cat "$dir/superuser.password")@127.0.0.1:$try_port/postgres"
      exit 0
    fi
    if [ "$port" = auto ] && tail -c +"$((offset + 1))" "$log" | grep -q "Address already in use"; then
      echo "port $try_port was taken before the server bound it (attempt $attempt); retrying" >&2
      continue
    fi
    echo "PostgreSQL $version did not start; server log $log:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  done
  echo "PostgreSQL $version: no free port after 5 attempts" >&2
  exit 1
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
