#!/usr/bin/env bash
# TRIAD's local stack: installs what is missing, starts and health-checks the services,
# runs the demo or the test suite. Idempotent: a second run reuses what is running.
#
#   scripts/dev.sh demo     set up, start the stack, run the demo
#   scripts/dev.sh test     set up, start the stack, run every check and test
#   scripts/dev.sh install | up | down | status
#   scripts/dev.sh pg-restart [fast|immediate]   restart the stack's PostgreSQL (a test uses
#                    immediate: a crash, recovered from the WAL on start)
#
# Environment (none needed):
#   STACK_DIR        state, logs and pids (default: <repo>/.dev)
#   STACK_STORAGE    Tansu storage: sqlite (default; durable across kill -9) or memory
#                    (faster, but loses records for readers that resume inside a batch:
#                    docs/adr/0007-tansu-quirks.md §1; not for the test suite)
#   CARGO_TARGET_DIR honoured as usual
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.dev}
STACK_STORAGE=${STACK_STORAGE:-sqlite}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TRIAD_BIN=$TARGET_DIR/debug/triad
TANSU_VERSION=0.6.0
KAFKA=127.0.0.1:9092
REGISTRY=http://127.0.0.1:8081
PG_PORT=5432
PG_BIN=""
# The cluster lives under the postgres user's home: the repository may sit in a directory the
# postgres user cannot enter (a mktemp -d clone, a CI workspace). One cluster per STACK_DIR.
PG_DATA=${PG_DATA:-/var/lib/postgresql/triad-dev/$(printf %s "$STACK_DIR" | md5sum | cut -c1-12)}
APT_PACKAGES=(postgresql libtss2-dev swtpm swtpm-tools tpm2-tools kcat build-essential cmake
  pkg-config libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libcurl4-openssl-dev curl
  python3-venv)

mkdir -p "$STACK_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[stack] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Waits until "$@" succeeds, up to $1 seconds; polling a health check, not sleeping blind.
wait_for() {
  local limit=$1 what=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < limit )) || return 1
    sleep 0.2
  done
  say "$what is up ($(( SECONDS - start ))s)"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

install_tansu() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  say "installing the Tansu broker $TANSU_VERSION (cargo install, ~10 minutes once)"
  cargo install --locked "tansu@$TANSU_VERSION" --features dynostore,libsql
}

install_wasm_target() {
  if ! rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2; then
    say "adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2 || die "could not add the wasm32-wasip2 target (the WebAssembly adapters in adapters/ need it)"
  fi
}

install_venv() {
  local venv=$STACK_DIR/venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import confluent_kafka, fastavro, pytest, requests, gql, websockets, cryptography.hazmat.primitives.hpke" 2>/dev/null; then
    say "creating the Python venv for compatibility tests ($venv)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/compat/requirements.txt"
  fi
}

cmd_install() {
  install_apt
  install_tansu
  install_wasm_target
  install_venv
}

build() {
  say "building triad (cargo build)"
  (cd "$ROOT" && cargo build --locked -p triad-cli)
}

# --- PostgreSQL: a private cluster in $PG_DATA, owned by the postgres user ----------------
pg_bin() {
  [ -n "$PG_BIN" ] && return
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PG_BIN" ] || die "PostgreSQL binaries not found (apt-get install postgresql)"
}
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
start_postgres() {
  pg_bin
  if pg_ready; then say "PostgreSQL already running on 127.0.0.1:$PG_PORT"; else
    local data=$PG_DATA
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data" && chown -R postgres:postgres "$(dirname "$data")" && chmod 700 "$data"
      (cd / && su postgres -s /bin/sh -c "'$PG_BIN/initdb' -D '$data' -A trust -U postgres >/dev/null")
    fi
    (cd / && su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$data' -l '$data/postgres.log' -w \
      -o \"-h 127.0.0.1 -p $PG_PORT -k '$data'\" start >/dev/null") \
      || die "PostgreSQL did not start; see $data/postgres.log"
    wait_for 30 "PostgreSQL (127.0.0.1:$PG_PORT, log $data/postgres.log)" pg_ready || die "PostgreSQL not ready"
  fi
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAq)
  "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='triad'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE ROLE triad LOGIN CREATEDB"
  "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='triad'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE DATABASE triad OWNER triad"
}
stop_postgres() {
  pg_bin
  if [ -f "$PG_DATA/postmaster.pid" ]; then
    (cd / && su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$PG_DATA' -m fast stop >/dev/null") || true
    say "PostgreSQL stopped"
  fi
}

# Restarts PostgreSQL: fast (open transactions aborted, every connection dropped) or immediate
# (a crash: no shutdown checkpoint, recovery from the WAL on start), for the restart test.
restart_postgres() {
  local mode=${1:-fast}
  case $mode in fast|immediate) ;; *) die "pg-restart: mode must be fast or immediate, not '$mode'" ;; esac
  pg_bin
  [ -f "$PG_DATA/postmaster.pid" ] || die "PostgreSQL is not running from $PG_DATA"
  (cd / && su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$PG_DATA' -l '$PG_DATA/postgres.log' \
    -m $mode -w -o \"-h 127.0.0.1 -p $PG_PORT -k '$PG_DATA'\" restart >/dev/null") \
    || die "PostgreSQL did not restart; see $PG_DATA/postgres.log"
  wait_for 30 "PostgreSQL (127.0.0.1:$PG_PORT)" pg_ready || die "PostgreSQL not ready"
  say "PostgreSQL restarted ($mode)"
}

# --- background processes with pid files --------------------------------------------------
running() { [ -f "$STACK_DIR/$1.pid" ] && kill -0 "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null; }
stop_proc() {
  if running "$1"; then
    kill "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null || true
    local pid; pid=$(cat "$STACK_DIR/$1.pid")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    say "$1 stopped"
  fi
  rm -f "$STACK_DIR/$1.pid"
}

# Starts "$2..." in its own session under $STACK_DIR, detached from our stdin/stdout (so a
# caller piping this script's output is not held open), logging to $STACK_DIR/$1.log.
spawn() {
  local name=$1; shift
  (cd "$STACK_DIR"; setsid "$@" </dev/null >"$STACK_DIR/$name.log" 2>&1 & echo $! >"$STACK_DIR/$name.pid")
}

# Health check through librdkafka 2.12 (the triad binary): Debian's kcat links librdkafka
# 2.0, whose ApiVersions request Tansu 0.6 does not answer in a form it parses.
kafka_ready() { timeout 15 "$TRIAD_BIN" topics ensure --dry-run >/dev/null 2>&1; }
start_tansu() {
  if kafka_ready; then say "Tansu (or another Kafka broker) already running on $KAFKA; reusing it"; return; fi
  # A registry from before this broker holds producer state and schema ids of a log that is
  # gone (memory storage): it must start again on the new broker's _schemas topic.
  stop_proc registry
  local storage=memory://tansu/
  [ "$STACK_STORAGE" = sqlite ] && storage=sqlite://tansu.db
  spawn tansu tansu broker --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" \
    --storage-engine "$storage"
  wait_for 60 "Tansu ($KAFKA, storage $storage, log $STACK_DIR/tansu.log)" kafka_ready \
    || die "Tansu did not come up; see $STACK_DIR/tansu.log"
}

registry_ready() { curl -sf "$REGISTRY/subjects" >/dev/null; }
start_registry() {
  if registry_ready; then say "schema registry already running on $REGISTRY; reusing it"; return; fi
  [ -x "$TRIAD_BIN" ] || build
  spawn registry "$TRIAD_BIN" registry
  wait_for 60 "schema registry ($REGISTRY, log $STACK_DIR/registry.log)" registry_ready \
    || die "the registry did not come up; see $STACK_DIR/registry.log"
}

cmd_up() {
  build
  start_postgres
  start_tansu
  start_registry
  "$TRIAD_BIN" topics ensure
}

cmd_down() {
  stop_proc registry
  stop_proc tansu
  stop_postgres
}

cmd_status() {
  pg_bin
  pg_ready && say "PostgreSQL: up (127.0.0.1:$PG_PORT)" || say "PostgreSQL: down"
  [ -x "$TRIAD_BIN" ] && kafka_ready && say "Tansu: up ($KAFKA)" || say "Tansu: down"
  registry_ready && say "registry: up ($REGISTRY)" || say "registry: down"
  say "logs: $STACK_DIR/*.log, $PG_DATA/postgres.log"
}

cmd_demo() {
  cmd_install
  cmd_up
  "$TRIAD_BIN" demo
}

cmd_test() {
  local start=$SECONDS
  cmd_install
  cmd_up
  say "cargo fmt --check"
  (cd "$ROOT" && cargo fmt --all -- --check && cargo fmt --all --manifest-path adapters/Cargo.toml -- --check)
  say "cargo clippy -D warnings (the workspace, then the WebAssembly adapters)"
  (cd "$ROOT" && cargo clippy --locked --workspace --all-targets -- -D warnings)
  (cd "$ROOT/adapters" && cargo clippy --locked --target wasm32-wasip2 \
    --target-dir "$TARGET_DIR/wasm-adapters" -- -D warnings)
  say "cargo test (integration tests use the stack above)"
  (cd "$ROOT" && cargo test --locked --workspace -- --test-threads 2)
  say "Python compatibility tests (confluent-kafka, fastavro)"
  (cd "$ROOT" && "$STACK_DIR/venv/bin/python" -m pytest -q tests/compat)
  say "all checks passed in $(( SECONDS - start ))s"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_install; cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  demo) cmd_demo ;;
  test) cmd_test ;;
  pg-restart) restart_postgres "${2:-fast}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
