#!/usr/bin/env bash
# A three-node Patroni test cluster on one machine: 3 etcd members (one cluster, v3 API)
# and 3 Patroni nodes running PostgreSQL 15, all on 127.0.0.1.
#
#   scripts/patroni-cluster.sh start DIR [BASE_PORT] [--sync]  # prints the facts below
#   scripts/patroni-cluster.sh stop DIR        # stops everything started from DIR
#   scripts/patroni-cluster.sh status DIR      # patronictl list
#   scripts/patroni-cluster.sh start-node DIR NAME   # (re)start one Patroni node (node1..3)
#
# Output of 'start' on stdout (everything else goes to stderr): one KEY=value line per
# fact, values without spaces or quotes (safe for `eval "$(... start DIR)"`), in this order:
#
#   URL=postgresql://postgres:PASSWORD@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/postgres
#   REST=http://127.0.0.1:R1,http://127.0.0.1:R2,http://127.0.0.1:R3
#   ETCD=http://127.0.0.1:C1,http://127.0.0.1:C2,http://127.0.0.1:C3
#   PATRONICTL_CONFIG_FILE=/abs/DIR/patronictl.yml
#   NODES=node1,node2,node3
#   PG_PORTS=P1,P2,P3
#   REST_PORTS=R1,R2,R3
#   BASE_PORT=B
#   SYNC=0|1
#
# Lists are in node order (node1, node2, node3).  The superuser password appears only in
# URL on stdout; it is kept in DIR/superuser.password (mode 0600), never in a log.
#
# Ports, fixed and derived from BASE_PORT (default 24000), all 12 of them below the
# ephemeral range 32768-60999 (see tests/test_ports.py):
#   etcd client B+0..B+2, etcd peer B+3..B+5, PostgreSQL B+6..B+8, Patroni REST B+9..B+11.
# A start refuses (exit 3, "port N is taken") when one of them is in use; nothing is
# left behind then, so the caller may retry with another BASE_PORT.  A DIR keeps the
# BASE_PORT it was created with.
#
# Synchronous replication: --sync or PATRONI_SYNC=1 (default off).  It is applied to the
# running cluster's DCS configuration at every start, so a restart may change it.
#
# Idempotent: 'start' on a running DIR says so and prints the facts (exit 0); it starts
# whatever member is not running; a 'start' after 'stop' reuses the data.  'stop' kills
# by pid files and then every process whose working directory lies in DIR, so it also
# works after a node was SIGKILLed and may be repeated.
#
# Installs patroni, etcd-server (and python3-etcd, postgresql-15) with apt-get when
# missing.  As root, etcd, Patroni and PostgreSQL run as the 'postgres' OS user
# (PostgreSQL refuses to run as root).  SCRAM password authentication on 127.0.0.1 only;
# the REST API has no authentication and listens on 127.0.0.1 only.
# Logs: DIR/etcdN/etcd.log, DIR/nodeN/patroni.log, DIR/nodeN/pglog/postgresql.log.
# Exit codes: 0 ok, 1 failure, 2 usage, 3 a port is taken.
set -euo pipefail

usage="usage: patroni-cluster.sh start DIR [BASE_PORT] [--sync] | stop DIR | status DIR | start-node DIR NAME"
action=${1:-}
[ -n "$action" ] || { echo "$usage" >&2; exit 2; }
shift
dir=${1:?$usage}
shift
dir=$(realpath -m -- "$dir")

PG_VERSION=15
bindir=/usr/lib/postgresql/$PG_VERSION/bin
scope=edulink-test
nodes=(1 2 3)
start_timeout=${PATRONI_START_TIMEOUT:-180}

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

is_root() { [ "$(id -u)" = 0 ]; }

# Run "$@" as the postgres OS user (when root) in a new session, detached from our
# stdin/stdout, with a clean environment; its pid (after exec) goes to $pidfile.
spawn() {
  local pidfile=$1 log=$2 workdir=$3
  shift 3
  local -a user=()
  if is_root; then user=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
  rm -f "$pidfile"
  (cd "$workdir" && exec setsid "${user[@]}" env -i HOME="$workdir" PATH=/usr/bin:/bin \
      LANG=C.UTF-8 sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
      </dev/null >>"$log" 2>&1) &
  disown $!
  local i
  for i in $(seq 100); do
    [ -s "$pidfile" ] && return 0
    sleep 0.05
  done
  echo "could not start $1 (no pid file $pidfile)" >&2
  return 1
}

# The pid in file $1 if that process is alive and its command line names DIR (no pid reuse).
live_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n 1 "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/" || return 1
  echo "$pid"
}

# Every etcd, Patroni or PostgreSQL process whose working directory is inside DIR
# (PostgreSQL's backends run in their data directory, etcd and Patroni in DIR/etcdN, DIR/nodeN).
pids_in_dir() {
  local p cwd comm
  for p in /proc/[0-9]*; do
    { read -r comm <"$p/comm"; } 2>/dev/null || continue
    case "$comm" in
      postgres | etcd | patroni | pg_rewind | pg_basebackup | initdb | pg_ctl) ;;
      *) continue ;;
    esac
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    case "$cwd/" in "$dir"/*) echo "${p#/proc/}" ;; esac
  done
}

wait_gone() {  # wait_gone SECONDS PID...
  local deadline=$((SECONDS + $1)) pid alive
  shift
  while :; do
    alive=0
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
      then alive=1; fi
    done
    [ "$alive" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

ports_for() {  # sets etcd_client, etcd_peer, pg_port, rest_port arrays from $base
  etcd_client=() etcd_peer=() pg_port=() rest_port=()
  local i
  for i in 0 1 2; do
    etcd_client+=($((base + i)))
    etcd_peer+=($((base + 3 + i)))
    pg_port+=($((base + 6 + i)))
    rest_port+=($((base + 9 + i)))
  done
}

join() { local IFS=,; echo "$*"; }

ensure_packages() {
  local -a missing=()
  command -v patroni >/dev/null || missing+=(patroni)
  command -v etcd >/dev/null || missing+=(etcd-server)
  "$PY" -c "import etcd" 2>/dev/null || missing+=(python3-etcd)
  [ -x "$bindir/postgres" ] || missing+=("postgresql-$PG_VERSION")
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  if is_root && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
}

secret() {  # secret FILE: a generated password kept in FILE (mode 0600)
  if [ ! -s "$1" ]; then
    (umask 077; head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 >"$1")
  fi
  chmod 600 "$1"
  cat "$1"
}

check_ports() {  # exit 3 naming the first taken port
  "$PY" - "${etcd_client[@]}" "${etcd_peer[@]}" "${pg_port[@]}" "${rest_port[@]}" <<'EOF'
import socket, sys
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            print(f"port {port} is taken ({e.strerror})", file=sys.stderr)
            sys.exit(3)
EOF
}

write_configs() {
  local i hosts password repl_password sync_bool=false
  [ "$sync" = 1 ] && sync_bool=true
  hosts=$(for i in 0 1 2; do echo "127.0.0.1:${etcd_client[$i]}"; done | paste -sd,)
  password=$(secret "$dir/superuser.password")
  repl_password=$(secret "$dir/replication.password")
  printf 'scope: %s\nnamespace: /service/\netcd3:\n  hosts: %s\n  protocol: http\n' \
    "$scope" "$hosts" >"$dir/patronictl.yml"
  for i in "${nodes[@]}"; do
    local n=$dir/node$i
    mkdir -p "$n/pglog"
    (umask 077; cat >"$n/patroni.yml" <<EOF
# Generated by scripts/patroni-cluster.sh at every start; holds passwords (mode 0600).
scope: $scope
namespace: /service/
name: node$i
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${rest_port[$((i - 1))]}
  connect_address: 127.0.0.1:${rest_port[$((i - 1))]}
etcd3:
  hosts: $hosts
  protocol: http
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: $sync_bool
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: logical  # move-service replicates a schema out of the cluster
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_connections: 100
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 1GB  # a replica that fell behind during a bulk load can still follow a new leader
        fsync: 'off'
        shared_buffers: 32MB
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:${pg_port[$((i - 1))]}
  connect_address: 127.0.0.1:${pg_port[$((i - 1))]}
  data_dir: '$n/data'
  bin_dir: '$bindir'
  pgpass: '$n/pgpass'
  use_unix_socket: false
  authentication:
    superuser:
      username: postgres
      password: '$password'
    replication:
      username: replicator
      password: '$repl_password'
  parameters:
    unix_socket_directories: ''
    logging_collector: 'on'
    log_directory: '$n/pglog'
    log_filename: postgresql.log
  pg_hba:
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
  basebackup:
    - checkpoint: fast
EOF
    )
    if is_root; then chown -R postgres: "$n"; fi
  done
}

start_etcd() {  # start_etcd INDEX (1..3), unless running
  local i=$1 e=$dir/etcd$1 initial="" j
  live_pid "$e/etcd.pid" >/dev/null && return 0
  mkdir -p "$e"
  if is_root; then chown postgres: "$e"; fi
  for j in 0 1 2; do
    initial+="${initial:+,}etcd$((j + 1))=http://127.0.0.1:${etcd_peer[$j]}"
  done
  local c=${etcd_client[$((i - 1))]} p=${etcd_peer[$((i - 1))]}
  spawn "$e/etcd.pid" "$e/etcd.log" "$e" etcd --name "etcd$i" --data-dir "$e/data" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$initial" --initial-cluster-token "$scope-$base" \
    --initial-cluster-state new --logger zap --log-outputs stderr
}

start_patroni() {  # start_patroni INDEX (1..3), unless running
  local n=$dir/node$1
  live_pid "$n/patroni.pid" >/dev/null && return 0
  spawn "$n/patroni.pid" "$n/patroni.log" "$n" patroni "$n/patroni.yml"
}

# wait_healthy WHAT: 'etcd' (a quorum answers /health) or 'cluster' (a leader and two
# replicas streaming from it; synchronous mode as asked); 'nodeN' (that node runs).
# Fails early, with exit 3 for "address already in use", when a process has died.
wait_healthy() {
  "$PY" - "$1" "$dir" "$start_timeout" "$sync" "$(join "${etcd_client[@]}")" \
    "$(join "${rest_port[@]}")" <<'EOF'
import json, os, sys, time, urllib.request

what, d, timeout, sync = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
etcd = [int(p) for p in sys.argv[5].split(",")]
rest = [int(p) for p in sys.argv[6].split(",")]

def get(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read() or b"null")

def dead():
    """(log, text) of a process of ours that exited, or None."""
    pidfiles = ([(f"{d}/etcd{i}/etcd.pid", f"{d}/etcd{i}/etcd.log") for i in (1, 2, 3)]
                if what == "etcd" else
                [(f"{d}/{what}/patroni.pid", f"{d}/{what}/patroni.log")] if what.startswith("node")
                else [(f"{d}/node{i}/patroni.pid", f"{d}/node{i}/patroni.log") for i in (1, 2, 3)])
    for pidfile, log in pidfiles:
        try:
            pid = int(open(pidfile).read().split()[0])
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    raise ProcessLookupError
        except (OSError, ValueError, IndexError):
            try:
                text = open(log, errors="replace").read()[-4000:]
            except OSError:
                text = ""
            return log, text
    return None

def cluster_ok():
    for port in rest:
        try:
            members = get(f"http://127.0.0.1:{port}/cluster")["members"]
            break
        except Exception:
            continue
    else:
        return "no REST API answers yet"
    leaders = [m for m in members if m["role"] == "leader" and m["state"] == "running"]
    if len(members) != 3 or len(leaders) != 1:
        return "members: " + ", ".join(f"{m['name']}={m['role']}/{m['state']}" for m in members)
    leader = leaders[0]
    config = get(f"{leader['api_url'].rsplit('/', 1)[0]}/config")
    if bool(config.get("synchronous_mode")) != sync:
        get(f"{leader['api_url'].rsplit('/', 1)[0]}/config", "PATCH",
            json.dumps({"synchronous_mode": sync}).encode())
        return f"set synchronous_mode={sync}"
    status = get(leader["api_url"])
    streaming = {r["application_name"] for r in status.get("replication", [])
                 if r.get("state") == "streaming"}
    others = {m["name"] for m in members if m is not leader}
    if streaming != others:
        return f"leader {leader['name']}; streaming: {sorted(streaming)}"
    if any(m["state"] != "running" for m in members):
        return "members: " + ", ".join(f"{m['name']}={m['role']}/{m['state']}" for m in members)
    if sync and not any(m["role"] == "sync_standby" for m in members):
        return "no sync_standby yet"
    return None

def node_ok():
    port = rest[int(what[4:]) - 1]
    try:
        state = get(f"http://127.0.0.1:{port}/patroni").get("state")
    except Exception as e:
        return f"{what}: {e}"
    return None if state == "running" else f"{what}: {state}"

def etcd_ok():
    healthy = 0
    for port in etcd:
        try:
            healthy += get(f"http://127.0.0.1:{port}/health").get("health") == "true"
        except Exception:
            pass
    return None if healthy == 3 else f"{healthy} of 3 etcd members healthy"

def logs():
    names = [f"{d}/etcd{i}/etcd.log" for i in (1, 2, 3)] + [
        f"{d}/node{i}/{log}" for i in (1, 2, 3)
        for log in ("patroni.log", "pglog/postgresql.log")]
    return {name: os.path.getsize(name) if os.path.exists(name) else 0 for name in names}

def port_taken(offsets):
    """The first line saying 'address already in use' written since *offsets*."""
    for name, offset in offsets.items():
        try:
            with open(name, "rb") as fh:
                fh.seek(offset)
                for line in fh.read().decode(errors="replace").splitlines():
                    if "address already in use" in line.lower():
                        return f"{name}: {line.strip()}"
        except OSError:
            continue
    return None

check = {"etcd": etcd_ok, "cluster": cluster_ok}.get(what, node_ok)
deadline = time.monotonic() + timeout
offsets = logs()
last = None
while True:
    try:
        last = check()
    except Exception as e:
        last = f"{type(e).__name__}: {e}"
    if last is None:
        sys.exit(0)
    taken = port_taken(offsets)
    if taken:
        print(f"a port is taken: {taken}", file=sys.stderr)
        sys.exit(3)
    gone = dead()
    if gone:
        log, text = gone
        print(f"{log.rsplit('/', 2)[-2]} exited; end of {log}:\n{text}", file=sys.stderr)
        sys.exit(3 if "address already in use" in text.lower() else 1)
    if time.monotonic() > deadline:
        print(f"not ready after {timeout:.0f} s: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.3)
EOF
}

facts() {
  local i hosts="" rest="" etcd=""
  for i in 0 1 2; do
    hosts+="${hosts:+,}127.0.0.1:${pg_port[$i]}"
    rest+="${rest:+,}http://127.0.0.1:${rest_port[$i]}"
    etcd+="${etcd:+,}http://127.0.0.1:${etcd_client[$i]}"
  done
  echo "URL=postgresql://postgres:$(cat "$dir/superuser.password")@$hosts/postgres"
  echo "REST=$rest"
  echo "ETCD=$etcd"
  echo "PATRONICTL_CONFIG_FILE=$dir/patronictl.yml"
  echo "NODES=node1,node2,node3"
  echo "PG_PORTS=$(join "${pg_port[@]}")"
  echo "REST_PORTS=$(join "${rest_port[@]}")"
  echo "BASE_PORT=$base"
  echo "SYNC=$sync"
}

start_members() {
  local i
  for i in "${nodes[@]}"; do start_etcd "$i" || return; done
  wait_healthy etcd || return
  for i in "${nodes[@]}"; do start_patroni "$i" || return; done
  wait_healthy cluster
}

any_running() {
  local i
  for i in "${nodes[@]}"; do
    live_pid "$dir/etcd$i/etcd.pid" >/dev/null && return 0
    live_pid "$dir/node$i/patroni.pid" >/dev/null && return 0
    live_pid "$dir/node$i/data/postmaster.pid" >/dev/null && return 0
  done
  return 1
}

all_running() {
  local i
  for i in "${nodes[@]}"; do
    live_pid "$dir/etcd$i/etcd.pid" >/dev/null || return 1
    live_pid "$dir/node$i/patroni.pid" >/dev/null || return 1
  done
}

stop_all() {
  local i pid pids=() leader=""
  # Patroni first: SIGTERM makes it stop PostgreSQL (fast shutdown).  The replicas go
  # first, so that no replica is promoted when the leader releases its key, and the
  # leader does not wait for replicas that are going away.
  for i in "${nodes[@]}"; do
    [ -s "$dir/base_port" ] || break
    live_pid "$dir/node$i/patroni.pid" >/dev/null || continue
    if curl -s -m 2 "http://127.0.0.1:$(($(cat "$dir/base_port") + 8 + i))/patroni" 2>/dev/null |
        grep -qE '"role": *"(master|primary)"'; then
      leader=$i
    fi
  done
  for wave in replicas leader; do
    pids=()
    for i in "${nodes[@]}"; do
      if [ "$wave" = leader ] && [ "$i" != "$leader" ]; then continue; fi
      if [ "$wave" = replicas ] && [ "$i" = "$leader" ]; then continue; fi
      if pid=$(live_pid "$dir/node$i/patroni.pid"); then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
    done
    [ "${#pids[@]}" = 0 ] || wait_gone 40 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
  done
  # A postmaster whose Patroni was SIGKILLed keeps running: stop it (fast shutdown).
  pids=()
  for i in "${nodes[@]}"; do
    if pid=$(live_pid "$dir/node$i/data/postmaster.pid"); then
      kill -INT "$pid" 2>/dev/null || true; pids+=("$pid")
    fi
  done
  [ "${#pids[@]}" = 0 ] || wait_gone 30 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
  # etcd: a graceful stop of all three members at once takes about 7 s (each waits for
  # its peers); 2 s of grace, then SIGKILL, which etcd survives by design (its WAL is
  # fsynced before it acknowledges a write) and Patroni is gone by now.
  pids=()
  for i in "${nodes[@]}"; do
    if pid=$(live_pid "$dir/etcd$i/etcd.pid"); then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  if [ "${#pids[@]}" -gt 0 ] && ! wait_gone 2 "${pids[@]}"; then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_gone 10 "${pids[@]}" || true
  fi
  # Whatever is left with its working directory in DIR (orphaned backends, a stuck member).
  mapfile -t pids < <(pids_in_dir)
  if [ "${#pids[@]}" -gt 0 ]; then
    echo "killing leftover processes in $dir: ${pids[*]}" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_gone 10 "${pids[@]}" || { echo "processes still alive: ${pids[*]}" >&2; return 1; }
  fi
}

case "$action" in
start)
  base="" sync=${PATRONI_SYNC:-0}
  for arg in "$@"; do
    case "$arg" in
      --sync) sync=1 ;;
      --no-sync) sync=0 ;;
      [0-9]*) base=$arg ;;
      *) echo "$usage" >&2; exit 2 ;;
    esac
  done
  [ "$sync" = 1 ] || [ "$sync" = true ] && sync=1 || sync=0
  if [ -s "$dir/base_port" ]; then
    stored=$(cat "$dir/base_port")
    if [ -n "$base" ] && [ "$base" != "$stored" ]; then
      echo "$dir was created with BASE_PORT=$stored, not $base" >&2
      exit 2
    fi
    base=$stored
  fi
  base=${base:-24000}
  ephemeral=32768  # Linux's default, unless the kernel says otherwise:
  { read -r ephemeral _ </proc/sys/net/ipv4/ip_local_port_range; } 2>/dev/null || true
  if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ $((base + 11)) -ge "$ephemeral" ]; then
    echo "BASE_PORT must be 1024..$((ephemeral - 12)): all 12 ports below the ephemeral range" >&2
    exit 2
  fi
  ports_for
  if all_running; then
    echo "patroni cluster in $dir is already running" >&2
    wait_healthy cluster >&2
    facts
    exit 0
  fi
  ensure_packages
  fresh=0
  [ -f "$dir/initialized" ] || fresh=1
  if [ "$fresh" = 1 ] && [ -d "$dir" ]; then
    stop_all >&2  # a failed first start may have left members behind
  fi
  any_running || check_ports
  mkdir -p "$dir"
  chmod 700 "$dir"
  if is_root; then
    chown postgres: "$dir"
    if ! setpriv --reuid=postgres --regid=postgres --init-groups test -w "$dir"; then
      echo "the postgres OS user cannot reach $dir (is a parent directory not searchable?)" >&2
      exit 1
    fi
  fi
  echo "$base" >"$dir/base_port"
  write_configs
  status=0
  start_members >&2 || status=$?
  if [ "$status" != 0 ]; then
    if [ "$fresh" = 1 ]; then
      echo "first start failed; removing what it made in $dir" >&2
      stop_all >&2 || true
      rm -rf "$dir"/etcd[123] "$dir"/node[123] "$dir/base_port"
    fi
    exit "$status"
  fi
  touch "$dir/initialized"
  facts
  ;;
start-node)
  name=${1:?$usage}
  case "$name" in node[123]) ;; *) echo "unknown node: $name" >&2; exit 2 ;; esac
  base=$(cat "$dir/base_port") sync=0
  ports_for
  start_patroni "${name#node}" >&2
  wait_healthy "$name" >&2
  ;;
stop)
  [ -d "$dir" ] || exit 0
  stop_all
  ;;
status)
  patronictl -c "$dir/patronictl.yml" list
  ;;
*)
  echo "$usage" >&2
  exit 2
  ;;
esac
